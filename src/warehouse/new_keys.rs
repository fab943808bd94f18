//! The keys a first load has written so far, in bounded memory: a Bloom filter in memory and
//! every key's hash in a temporary file, so that rows with new keys are appended rather than
//! merged, whatever the size of the table.

use super::batches::Keys;
use arrow::array::{BooleanArray, BooleanBufferBuilder, RecordBatch};
use arrow::error::ArrowError;
use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::os::unix::fs::FileExt;

/// Filter bits per key while the filter may still grow: at this density about one new key in
/// 10^5 is a false "maybe", which costs a look into the file, never a wrong answer.
const BITS_PER_KEY: u64 = 32;
/// A block is 256 bits (one 32-byte read); the filter starts at 1 MiB...
const FIRST_BLOCKS: usize = 1 << 15;
/// ...and stops growing at 64 MiB (16.7 million keys at full density). Past that, false
/// "maybe"s grow with the table: they cost reading time, not memory.
const MAX_BLOCKS: usize = 1 << 21;
/// A binary search in the file costs about one system call per step; reading a run through
/// costs about a nanosecond per key. Above this many keys per step, a run is read through.
const KEYS_PER_PROBE: u64 = 500;
/// Keys read per system call when a run is read through or the filter is rebuilt.
const READ_KEYS: usize = 1 << 16;

/// Keys written so far into a table that was empty when the run began, as 64-bit hashes.
/// A row whose key hash is new cannot be in the table and is appended; only the others (a
/// repeated key, or the rare hash collision) need the slower merge. Correct either way, and
/// a first load of millions of rows stays a sequence of appends instead of ever larger merges.
///
/// The filter answers "certainly new" for almost every new key; a "maybe" is settled by the
/// file, where each call's new hashes are one sorted run. Memory is the filter (64 MiB at
/// most) plus the place of each run (16 bytes per commit); the file grows by 8 bytes per key.
pub struct NewKeys {
    filter: Filter,
    max_blocks: usize,
    spill: Spill,
    count: u64,
    state: foldhash::quality::RandomState,
}

impl NewKeys {
    /// An empty set, with its file in the system's temporary folder (`TMPDIR`). The file has
    /// no name and goes away with the process.
    pub fn new() -> std::io::Result<NewKeys> {
        NewKeys::with_blocks(FIRST_BLOCKS, MAX_BLOCKS)
    }

    /// An empty set whose filter starts at `first` blocks and grows to `max`: small sizes let
    /// tests reach the file and the growth with few rows.
    fn with_blocks(first: usize, max: usize) -> std::io::Result<NewKeys> {
        Ok(NewKeys {
            filter: Filter::new(first),
            max_blocks: max.max(first),
            spill: Spill {
                file: tempfile::tempfile()?,
                runs: Vec::new(),
                end: 0,
            },
            count: 0,
            state: Default::default(),
        })
    }

    /// Bytes held in memory, whatever the number of keys in the file.
    pub fn memory_bytes(&self) -> usize {
        self.filter.blocks.len() * std::mem::size_of::<Block>()
            + self.spill.runs.capacity() * std::mem::size_of::<(u64, u64)>()
    }

    /// Splits `batch` into (rows with a key never seen in this run, the other rows). Of rows
    /// repeating a key within `batch`, the first may be new; the later ones never are.
    pub fn split(
        &mut self,
        batch: &RecordBatch,
        key: &[String],
    ) -> Result<(RecordBatch, RecordBatch), ArrowError> {
        let keys = Keys::of(batch, key)?;
        let n = batch.num_rows();
        let hashes: Vec<u64> = (0..n).map(|i| self.state.hash_one(keys.get(i))).collect();
        let mut in_batch: HashSet<u64, Ids> = HashSet::with_capacity_and_hasher(n, Ids::default());
        let mut fresh = vec![false; n];
        // First rows of their key in `batch` that the filter may have held before.
        let mut maybe: Vec<usize> = Vec::new();
        for (i, &h) in hashes.iter().enumerate() {
            if !in_batch.insert(h) {
                continue;
            }
            // Set at once: a key new or not, the filter must hold it from now on.
            if self.filter.insert(h) {
                maybe.push(i);
            } else {
                fresh[i] = true;
            }
        }
        drop(in_batch);
        if !maybe.is_empty() {
            let mut asked: Vec<u64> = maybe.iter().map(|&i| hashes[i]).collect();
            asked.sort_unstable();
            let found = self.spill.find(&asked).map_err(spill_error)?;
            for i in maybe {
                fresh[i] = !found.contains(&hashes[i]);
            }
        }
        let mut run: Vec<u64> = hashes
            .iter()
            .zip(&fresh)
            .filter(|(_, f)| **f)
            .map(|(h, _)| *h)
            .collect();
        run.sort_unstable();
        self.spill.append(&run).map_err(spill_error)?;
        self.count += run.len() as u64;
        self.grow().map_err(spill_error)?;

        let mut mask = BooleanBufferBuilder::new(n);
        for f in fresh {
            mask.append(f);
        }
        let mask = BooleanArray::new(mask.finish(), None);
        let new = arrow::compute::filter_record_batch(batch, &mask)?;
        let again = arrow::compute::filter_record_batch(batch, &arrow::compute::not(&mask)?)?;
        Ok((new, again))
    }

    /// Rebuilds the filter larger from the file when it holds more keys than its density
    /// allows, up to its maximum. The old filter is freed first: the file has every key.
    fn grow(&mut self) -> std::io::Result<()> {
        let wanted = usize::try_from((self.count * BITS_PER_KEY).div_ceil(256))
            .unwrap_or(usize::MAX)
            .next_power_of_two()
            .min(self.max_blocks);
        if wanted <= self.filter.blocks.len() {
            return Ok(());
        }
        self.filter = Filter::new(0);
        let mut bigger = Filter::new(wanted);
        for &(offset, len) in &self.spill.runs {
            self.spill.scan(offset, len, |h| {
                bigger.insert(h);
            })?;
        }
        self.filter = bigger;
        Ok(())
    }
}

fn spill_error(e: std::io::Error) -> ArrowError {
    ArrowError::IoError(
        format!("the new-key file in the temporary folder (TMPDIR): {e}"),
        e,
    )
}

/// A hasher for values that are hashes already.
#[derive(Default)]
pub struct Identity(u64);

type Ids = BuildHasherDefault<Identity>;

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; any other input still hashes deterministically.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Block = [u32; 8];

/// A split-block Bloom filter (as Parquet's): the high half of a hash picks a 256-bit block,
/// the low half sets one bit in each of its eight words, so a lookup touches one cache line.
struct Filter {
    blocks: Vec<Block>,
}

const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

impl Filter {
    fn new(blocks: usize) -> Filter {
        Filter {
            blocks: vec![[0; 8]; blocks],
        }
    }

    fn place(&self, h: u64) -> (usize, Block) {
        let block = (((h >> 32) * self.blocks.len() as u64) >> 32) as usize;
        let low = h as u32;
        (block, SALT.map(|s| 1u32 << (low.wrapping_mul(s) >> 27)))
    }

    /// Adds `h`; true when the filter may have held it already (every bit was set).
    fn insert(&mut self, h: u64) -> bool {
        let (b, mask) = self.place(h);
        let mut held = true;
        for (word, bit) in self.blocks[b].iter_mut().zip(mask) {
            held &= *word & bit != 0;
            *word |= bit;
        }
        held
    }
}

/// Every key hash written, in an unnamed temporary file: one ascending run per call.
struct Spill {
    file: File,
    /// (byte offset, number of hashes) of each run.
    runs: Vec<(u64, u64)>,
    end: u64,
}

impl Spill {
    fn append(&mut self, sorted: &[u64]) -> std::io::Result<()> {
        if sorted.is_empty() {
            return Ok(());
        }
        let bytes: Vec<u8> = sorted.iter().flat_map(|h| h.to_le_bytes()).collect();
        self.file.write_all_at(&bytes, self.end)?;
        self.runs.push((self.end, sorted.len() as u64));
        self.end += bytes.len() as u64;
        Ok(())
    }

    /// Which of `asked` (ascending) the file holds.
    fn find(&self, asked: &[u64]) -> std::io::Result<HashSet<u64, Ids>> {
        let mut found: HashSet<u64, Ids> = HashSet::default();
        for &(offset, len) in &self.runs {
            let steps = asked.len() as u64 * u64::from(64 - len.leading_zeros());
            if steps * KEYS_PER_PROBE < len {
                for &h in asked {
                    if self.search(offset, len, h)? {
                        found.insert(h);
                    }
                }
            } else {
                // Both ascending: one pass over the run.
                let mut next = asked.iter().peekable();
                self.scan(offset, len, |h| {
                    while next.next_if(|&&a| a < h).is_some() {}
                    if next.peek() == Some(&&h) {
                        found.insert(h);
                    }
                })?;
            }
        }
        Ok(found)
    }

    /// Whether the run at `offset` of `len` hashes holds `h`, by binary search.
    fn search(&self, offset: u64, len: u64, h: u64) -> std::io::Result<bool> {
        let (mut lo, mut hi) = (0u64, len);
        let mut word = [0u8; 8];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            self.file.read_exact_at(&mut word, offset + mid * 8)?;
            match u64::from_le_bytes(word).cmp(&h) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Calls `f` with each hash of the run at `offset`, in order.
    fn scan(&self, offset: u64, len: u64, mut f: impl FnMut(u64)) -> std::io::Result<()> {
        let mut buf = vec![0u8; READ_KEYS * 8];
        let mut done = 0u64;
        while done < len {
            let take = (len - done).min(READ_KEYS as u64) as usize;
            let bytes = &mut buf[..take * 8];
            self.file.read_exact_at(bytes, offset + done * 8)?;
            for w in bytes.chunks_exact(8) {
                f(u64::from_le_bytes(w.try_into().expect("8 bytes")));
            }
            done += take as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(keys: &[u64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("row", DataType::Int64, false),
        ]));
        let k: StringArray = keys.iter().map(|k| Some(format!("key-{k}"))).collect();
        let row: Int64Array = (0..keys.len() as i64).collect();
        RecordBatch::try_new(schema, vec![Arc::new(k), Arc::new(row)]).unwrap()
    }

    fn rows(b: &RecordBatch) -> Vec<i64> {
        crate::warehouse::tests::int64s(b, "row")
    }

    /// The same answers as an exact set of every key, over batches where about a third of
    /// the keys repeat (from earlier batches or within the batch). The tiny filter is full
    /// almost at once, so nearly every row is settled by the file, both by binary search
    /// (few questions) and by reading runs through (many); it also grows twice.
    #[test]
    fn answers_as_an_exact_set_would_with_a_saturated_filter_and_a_growing_one() {
        for (first, max) in [(1, 1), (1, 4), (FIRST_BLOCKS, MAX_BLOCKS)] {
            let mut keys = NewKeys::with_blocks(first, max).unwrap();
            let mut exact = std::collections::HashSet::new();
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut repeated = 0;
            for size in [1usize, 7, 300, 2_000, 5, 3_000, 1] {
                let ks: Vec<u64> = (0..size).map(|_| next() % 9_000).collect();
                let b = batch(&ks);
                let (new, again) = keys.split(&b, &["k".to_string()]).unwrap();
                let want_new: Vec<i64> = ks
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| exact.insert(**k))
                    .map(|(i, _)| i as i64)
                    .collect();
                let want_again: Vec<i64> =
                    (0..size as i64).filter(|i| !want_new.contains(i)).collect();
                assert_eq!(
                    rows(&new),
                    want_new,
                    "filter {first}..{max}, batch of {size}"
                );
                assert_eq!(
                    rows(&again),
                    want_again,
                    "filter {first}..{max}, batch of {size}"
                );
                repeated += want_again.len();
            }
            assert!(repeated > 1_000, "the data repeats keys: {repeated}");
            assert!(keys.filter.blocks.len() <= max);
        }
    }

    #[test]
    fn the_filter_grows_by_the_keys_it_holds_and_stops_at_its_maximum() {
        let mut keys = NewKeys::with_blocks(1, 8).unwrap();
        let b = batch(&(0..20).collect::<Vec<_>>());
        keys.split(&b, &["k".to_string()]).unwrap();
        // 20 keys of 32 bits: 640 bits, 3 blocks, rounded to 4.
        assert_eq!(keys.filter.blocks.len(), 4);
        let b = batch(&(20..2_000).collect::<Vec<_>>());
        let (new, _) = keys.split(&b, &["k".to_string()]).unwrap();
        assert_eq!(new.num_rows(), 1_980);
        assert_eq!(keys.filter.blocks.len(), 8);
        assert_eq!(
            keys.memory_bytes(),
            8 * 32 + keys.spill.runs.capacity() * 16
        );
        assert_eq!(keys.spill.end, 2_000 * 8);
        // Every key written is still known after the rebuilds.
        let (new, again) = keys
            .split(&batch(&[0, 19, 20, 1_999, 2_000]), &["k".to_string()])
            .unwrap();
        assert_eq!(rows(&new), vec![4]);
        assert_eq!(rows(&again), vec![0, 1, 2, 3]);
    }
}
