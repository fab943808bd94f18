//! Small reads of a local warehouse's files done on the thread that asks for them, instead of
//! on tokio's blocking pool: the object store DataFusion reads local Parquet files through.
//!
//! `object_store`'s `LocalFileSystem` hands every read to the blocking pool, which costs two
//! thread wake-ups per read, and a ranged read (a Parquet footer) takes two round trips: one
//! to open the file, one to read it; a report that opens many small files paid more in
//! context switches than in reading. Reading a few kilobytes from the page cache takes
//! microseconds, less than one wake-up; large reads still go to the pool, so that a slow disk
//! never holds a worker that other partitions wait for.

use std::fmt;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};

/// The largest read (all ranges of one call together) done in place. Parquet footers and the
/// column chunks of small files are far below it; the dossiers' column chunks are above it.
pub const INLINE_MAX: u64 = 1 << 20;

/// The local file system, with reads of at most [`INLINE_MAX`] bytes done in place; every
/// other operation is `LocalFileSystem`'s.
#[derive(Debug, Default)]
pub struct InlineLocalReads {
    inner: LocalFileSystem,
}

impl InlineLocalReads {
    pub fn new() -> Self {
        Self::default()
    }

    fn open(&self, location: &Path) -> Result<(std::fs::File, PathBuf)> {
        let path = self.inner.path_to_filesystem(location)?;
        match std::fs::File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) => Err(io_error(e, &path)),
        }
    }
}

/// `LocalFileSystem`'s error kinds: a missing file is `NotFound`, so that callers that look
/// for one (the Delta log's next commit) behave the same with either store.
fn io_error(e: std::io::Error, path: &std::path::Path) -> object_store::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        object_store::Error::NotFound {
            path: path.display().to_string(),
            source: Box::new(e),
        }
    } else {
        object_store::Error::Generic {
            store: "LocalFileSystem",
            source: format!("{}: {e}", path.display()).into(),
        }
    }
}

fn read_at(file: &std::fs::File, path: &std::path::Path, range: Range<u64>) -> Result<Bytes> {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    file.read_exact_at(&mut buf, range.start).map_err(|e| {
        let e = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::new(
                e.kind(),
                format!(
                    "bytes {}..{} are past the end of the file",
                    range.start, range.end
                ),
            )
        } else {
            e
        };
        io_error(e, path)
    })?;
    Ok(Bytes::from(buf))
}

/// Whether `options` ask for a plain read of a range small enough to do in place.
fn inline_range(options: &GetOptions) -> bool {
    let plain = !options.head
        && options.if_match.is_none()
        && options.if_none_match.is_none()
        && options.if_modified_since.is_none()
        && options.if_unmodified_since.is_none()
        && options.version.is_none();
    plain
        && match &options.range {
            Some(GetRange::Bounded(r)) => r.end.saturating_sub(r.start) <= INLINE_MAX,
            Some(GetRange::Suffix(n)) => *n <= INLINE_MAX,
            _ => false,
        }
}

impl fmt::Display for InlineLocalReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InlineLocalReads({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for InlineLocalReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if !inline_range(&options) {
            return self.inner.get_opts(location, options).await;
        }
        let (file, path) = self.open(location)?;
        let md = file.metadata().map_err(|e| io_error(e, &path))?;
        let range = options
            .range
            .as_ref()
            .expect("inline_range checked it")
            .as_range(md.len())
            .map_err(|e| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: format!("{}: {e}", path.display()).into(),
            })?;
        let bytes = read_at(&file, &path, range.clone())?;
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: md
                .modified()
                .map(chrono::DateTime::<chrono::Utc>::from)
                .unwrap_or_default(),
            size: md.len(),
            e_tag: None,
            version: None,
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures_util::stream::once(async move { Ok(bytes) }).boxed(),
            ),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        if total > INLINE_MAX {
            return self.inner.get_ranges(location, ranges).await;
        }
        let (file, path) = self.open(location)?;
        ranges
            .iter()
            .map(|r| read_at(&file, &path, r.clone()))
            .collect()
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use std::time::Duration;

    fn location(p: &std::path::Path) -> Path {
        // Not `from_filesystem_path`, which needs the file to exist.
        Path::from_absolute_path(p).unwrap()
    }

    /// 1.5 MiB of varied bytes in a file, and its location.
    fn file(dir: &std::path::Path) -> (Vec<u8>, Path) {
        let data: Vec<u8> = (0..(3u32 << 19)).map(|i| (i % 251) as u8).collect();
        let p = dir.join("data.bin");
        std::fs::write(&p, &data).unwrap();
        (data, location(&p))
    }

    #[tokio::test]
    async fn reads_return_what_local_file_system_returns_and_the_same_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (data, loc) = file(dir.path());
        let store = InlineLocalReads::new();
        let local = LocalFileSystem::new();

        // In place (a footer-sized range, a suffix) and delegated (above INLINE_MAX).
        for r in [0..10u64, 1000..9000, 1_500_000..1_572_864, 0..1_200_000] {
            let got = store.get_range(&loc, r.clone()).await.unwrap();
            assert_eq!(&got[..], &data[r.start as usize..r.end as usize]);
            assert_eq!(got, local.get_range(&loc, r).await.unwrap());
        }
        let opts = GetOptions {
            range: Some(GetRange::Suffix(4096)),
            ..Default::default()
        };
        let got = store.get_opts(&loc, opts).await.unwrap();
        assert_eq!(got.range, (data.len() as u64 - 4096)..data.len() as u64);
        assert_eq!(got.meta.size, data.len() as u64);
        assert_eq!(&got.bytes().await.unwrap()[..], &data[data.len() - 4096..]);
        let ranges = [5..50u64, 700_000..700_100, 3..4];
        let got = store.get_ranges(&loc, &ranges).await.unwrap();
        assert_eq!(got, local.get_ranges(&loc, &ranges).await.unwrap());
        assert_eq!(&got[1][..], &data[700_000..700_100]);

        // A missing file is NotFound, as for LocalFileSystem; a range past the end fails.
        let missing = location(&dir.path().join("missing.bin"));
        let e = store.get_range(&missing, 0..10).await.unwrap_err();
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
        let e = store
            .get_ranges(&missing, std::slice::from_ref(&(0..10)))
            .await
            .unwrap_err();
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
        let end = data.len() as u64;
        let e = store
            .get_ranges(&loc, std::slice::from_ref(&(end - 5..end + 5)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");

        // Whole-file reads, heads and listings are LocalFileSystem's.
        assert_eq!(store.head(&loc).await.unwrap().size, end);
        assert_eq!(
            store.get(&loc).await.unwrap().bytes().await.unwrap().len(),
            data.len()
        );
    }

    /// With the blocking pool's only thread taken, a small read still completes: it is done
    /// in place. LocalFileSystem's read of the same bytes waits for the pool.
    #[test]
    fn small_reads_do_not_wait_for_the_blocking_pool() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (data, loc) = file(dir.path());
        let (release, wait) = std::sync::mpsc::channel::<()>();
        rt.block_on(async {
            let busy = tokio::task::spawn_blocking(move || wait.recv().ok());
            let store = InlineLocalReads::new();
            let got = tokio::time::timeout(Duration::from_secs(10), store.get_range(&loc, 0..8))
                .await
                .expect("an in-place read does not wait for the blocking pool")
                .unwrap();
            assert_eq!(&got[..], &data[..8]);
            let local = LocalFileSystem::new();
            let waited =
                tokio::time::timeout(Duration::from_millis(300), local.get_range(&loc, 0..8)).await;
            assert!(
                waited.is_err(),
                "LocalFileSystem read while the pool was busy"
            );
            release.send(()).unwrap();
            busy.await.unwrap();
        });
    }
}
