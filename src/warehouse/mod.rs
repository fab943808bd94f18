//! The warehouse: one Delta Lake table per dataset (and the quarantine) under the
//! `[warehouse] url`, a local folder by default or `s3://` through the same code; writes that
//! carry their watermark in the same atomic commit as their data.

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema as ArrowSchema};
use arrow::row::{RowConverter, SortField};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Transaction;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use url::Url;

pub mod lease;
pub mod local_reads;
mod new_keys;
pub mod published;
pub mod quarantine;
pub mod runs;
pub mod s3;

pub use new_keys::NewKeys;

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("warehouse url `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("table `{table}`: {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("table `{table}`: {message}")]
    Data { table: String, message: String },
}

/// Where the tables live.
#[derive(Debug, Clone)]
pub struct Warehouse {
    base: Url,
    /// delta-rs storage options of every table (on S3: an endpoint, credentials).
    options: HashMap<String, String>,
}

impl Warehouse {
    /// `url` as written in parstat.toml: a folder (relative to the project), `file://` or `s3://`.
    pub fn new(project_root: &Path, url: &str) -> Result<Warehouse, WarehouseError> {
        let bad = |message: String| WarehouseError::Url {
            url: url.to_string(),
            message,
        };
        let base = if url.contains("://") {
            let mut u = Url::parse(url).map_err(|e| bad(e.to_string()))?;
            if !u.path().ends_with('/') {
                u.set_path(&format!("{}/", u.path()));
            }
            u
        } else {
            // Nothing is created here: a read-only command leaves no folder behind; the
            // first write creates its table's folder (see `open`).
            let path = project_root.join(url);
            let abs = match path.canonicalize() {
                Ok(p) => p,
                Err(_) => std::path::absolute(&path).map_err(|e| bad(e.to_string()))?,
            };
            Url::from_directory_path(&abs)
                .map_err(|_| bad(format!("{} is not an absolute folder", abs.display())))?
        };
        if matches!(base.scheme(), "s3" | "s3a") {
            s3::register();
        }
        Ok(Warehouse {
            options: HashMap::new(),
            base,
        })
    }

    /// More delta-rs storage options for every table (an endpoint, credentials), over the
    /// environment's `AWS_*` variables.
    pub fn with_storage_options(mut self, options: HashMap<String, String>) -> Warehouse {
        self.options.extend(options);
        self
    }

    /// The table if it was ever written, for reading; creates nothing.
    pub async fn read(&self, name: &str) -> Result<Option<DeltaTable>, WarehouseError> {
        if let Ok(p) = self.table_url(name).to_file_path() {
            if !p.join("_delta_log").is_dir() {
                return Ok(None);
            }
        }
        let table = self.open(name).await?;
        Ok(table.version().is_some().then_some(table))
    }

    pub fn table_url(&self, name: &str) -> Url {
        self.base
            .join(&format!("{name}/"))
            .expect("a table name is a valid path segment")
    }

    /// The table, loaded if it exists, uninitialised (version `None`) if not.
    pub async fn open(&self, name: &str) -> Result<DeltaTable, WarehouseError> {
        let url = self.table_url(name);
        // A local table's folder must exist before delta-rs opens it (object stores need none).
        if let Ok(p) = url.to_file_path() {
            std::fs::create_dir_all(&p).map_err(|e| WarehouseError::Url {
                url: url.to_string(),
                message: format!("cannot create {}: {e}", p.display()),
            })?;
        }
        DeltaTable::try_from_url_with_storage_options(url, self.options.clone())
            .await
            .map_err(|source| WarehouseError::Delta {
                table: name.to_string(),
                source: Box::new(source),
            })
    }
}

/// The object store and the path of `name` under the warehouse, for state that is not a
/// table (the delivery ledger, the scheduler's lease): a local folder or an S3 prefix.
pub fn object_store_at(
    project_root: &Path,
    warehouse_url: &str,
    name: &str,
) -> Result<(Arc<dyn object_store::ObjectStore>, object_store::path::Path), WarehouseError> {
    let err = |message: String| WarehouseError::Url {
        url: warehouse_url.to_string(),
        message,
    };
    let base = Warehouse::new(project_root, warehouse_url)?.table_url(name);
    match base.scheme() {
        "file" => {
            let dir = base
                .to_file_path()
                .map_err(|_| err(format!("{base} is not a local folder")))?;
            std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| err(e.to_string()))?;
            Ok((Arc::new(fs), object_store::path::Path::default()))
        }
        "s3" | "s3a" => {
            let s3 = s3::client(&base, &HashMap::new()).map_err(|e| err(e.to_string()))?;
            Ok((
                Arc::new(s3),
                object_store::path::Path::from(base.path().trim_matches('/')),
            ))
        }
        other => Err(err(format!("no object store for `{other}://` warehouses"))),
    }
}

/// The version of an application transaction recorded in the table (our watermarks and
/// loaded-file marks), `None` for a new table or an unknown id.
pub async fn app_version(table: &DeltaTable, app_id: &str) -> Result<Option<i64>, WarehouseError> {
    if table.version().is_none() {
        return Ok(None);
    }
    let state = table.snapshot().map_err(|source| WarehouseError::Delta {
        table: app_id.to_string(),
        source: Box::new(source),
    })?;
    state
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(|source| WarehouseError::Delta {
            table: app_id.to_string(),
            source: Box::new(source),
        })
}

/// Commit properties: run metadata plus application transactions (watermark, loaded files).
pub fn commit_properties(
    metadata: Vec<(String, serde_json::Value)>,
    txns: Vec<(String, i64)>,
) -> CommitProperties {
    CommitProperties::default()
        .with_metadata(metadata)
        .with_application_transactions(
            txns.into_iter()
                .map(|(id, v)| Transaction::new(id, v))
                .collect(),
        )
}

/// The properties of a commit that another of the same run follows: no checkpoint. delta-rs
/// writes one every 100 commits (`delta.checkpointInterval`), and each commit a process makes
/// after that grows its memory, so a long first load would pass 1 GiB. The run writes the
/// checkpoint it skipped once it is done ([`checkpoint_skipped`]).
pub fn followed(props: CommitProperties) -> CommitProperties {
    props.with_create_checkpoint(false)
}

/// Writes a checkpoint of `table` when a run that committed the versions after `before` (all
/// of them, for `None`) skipped one that delta-rs would have written (see [`followed`]); the
/// run's last commit writes its own on the usual interval. True when one was written.
pub async fn checkpoint_skipped(
    table: &DeltaTable,
    before: Option<u64>,
) -> Result<bool, WarehouseError> {
    use deltalake::table::config::TablePropertiesExt as _;
    let err = |source: deltalake::DeltaTableError| WarehouseError::Delta {
        table: table.table_url().to_string(),
        source: Box::new(source),
    };
    let Some(last) = table.version() else {
        return Ok(false);
    };
    let every = table
        .snapshot()
        .map_err(err)?
        .table_config()
        .checkpoint_interval()
        .get();
    // delta-rs checkpoints version v when v + 1 is a multiple of the interval; the versions
    // this run committed before its last are before+1 ..= last-1.
    let first = before.map_or(0, |b| b + 1);
    let due = |v: u64| (v + 1).is_multiple_of(every);
    let skipped = last > first && (last / every) > (first / every);
    if !skipped || due(last) {
        return Ok(false);
    }
    deltalake::checkpoints::create_checkpoint(table, None)
        .await
        .map_err(err)?;
    Ok(true)
}

/// Deletes the files that the table's commits replaced longer ago than its retention period
/// (`delta.deletedFileRetentionDuration`, 7 days by default), and returns how many. Every
/// merge rewrites the files it touches and a replace rewrites them all; without this the
/// replaced files would stay forever and fill the disk. Only files the log names as removed are
/// deleted (delta-rs's lite mode: no listing of the table's folder), and a version of the
/// last 7 days can still be read. `clock` replaces the system clock (tests).
pub async fn vacuum(
    table: &DeltaTable,
    clock: Option<Arc<dyn deltalake::operations::vacuum::Clock>>,
    run_id: &str,
) -> Result<usize, WarehouseError> {
    let mut vacuum = table
        .clone()
        .vacuum()
        .with_mode(deltalake::operations::vacuum::VacuumMode::Lite)
        .with_commit_properties(commit_properties(
            vec![("parstat.run_id".into(), run_id.into())],
            vec![],
        ));
    if let Some(c) = clock {
        vacuum = vacuum.with_clock(c);
    }
    let (_, metrics) = vacuum.await.map_err(|source| WarehouseError::Delta {
        table: table.table_url().to_string(),
        source: Box::new(source),
    })?;
    Ok(metrics.files_deleted.len())
}

/// Delta has no unsigned integers: UInt8/16/32 are stored as the next wider signed type.
pub fn to_delta(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    cast_batch(batch, &Arc::new(delta_schema(batch.schema().as_ref())))
}

/// `batch` with each column cast to the type of its field in `schema` (same order).
pub fn cast_batch(
    batch: &RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let cols: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(schema.clone(), cols)
}

pub fn delta_schema(schema: &ArrowSchema) -> ArrowSchema {
    ArrowSchema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::UInt8 => DataType::Int16,
                    DataType::UInt16 => DataType::Int32,
                    DataType::UInt32 => DataType::Int64,
                    t => t.clone(),
                };
                f.as_ref().clone().with_data_type(t)
            })
            .collect::<Vec<_>>(),
    )
}

/// The key of each row as bytes: a one-column text key without nulls as its own bytes (no
/// copy; the usual case), any other key in Arrow's row format.
enum Keys {
    Text(arrow::array::StringArray),
    Rows(arrow::row::Rows),
}

impl Keys {
    fn of(batch: &RecordBatch, key: &[String]) -> Result<Keys, arrow::error::ArrowError> {
        if let [k] = key {
            let c = batch.column(batch.schema().index_of(k)?);
            if let Some(a) = c.as_any().downcast_ref::<arrow::array::StringArray>() {
                if a.null_count() == 0 {
                    return Ok(Keys::Text(a.clone()));
                }
            }
        }
        key_rows(batch, key).map(Keys::Rows)
    }

    fn get(&self, i: usize) -> &[u8] {
        match self {
            Keys::Text(a) => a.value(i).as_bytes(),
            Keys::Rows(r) => r.row(i).data(),
        }
    }
}

/// The key columns of each row in a comparable, hashable byte form.
fn key_rows(
    batch: &RecordBatch,
    key: &[String],
) -> Result<arrow::row::Rows, arrow::error::ArrowError> {
    let idx: Vec<usize> = key
        .iter()
        .map(|k| batch.schema().index_of(k))
        .collect::<Result<_, _>>()?;
    let conv = RowConverter::new(
        idx.iter()
            .map(|i| SortField::new(batch.column(*i).data_type().clone()))
            .collect(),
    )?;
    conv.convert_columns(
        &idx.iter()
            .map(|i| batch.column(*i).clone())
            .collect::<Vec<_>>(),
    )
}

/// Keeps one row per primary key: the one with the greatest `order` value (the newest
/// `updated_at`), the last one read on ties. A merge must not see a key twice.
pub fn dedup(
    batch: &RecordBatch,
    key: &[String],
    order: Option<&str>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let keys = Keys::of(batch, key)?;
    let order_col = match order {
        Some(o) => Some(cast(
            batch.column(batch.schema().index_of(o)?),
            &DataType::Int64,
        )?),
        None => None,
    };
    let order_val = |i: usize| -> i64 {
        order_col
            .as_ref()
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
            .map(|a| if a.is_null(i) { i64::MIN } else { a.value(i) })
            .unwrap_or(0)
    };
    let mut best: HashMap<&[u8], usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(batch.num_rows(), Default::default());
    for i in 0..batch.num_rows() {
        let k = keys.get(i);
        match best.get(k) {
            Some(&j) if order_val(j) > order_val(i) => {}
            _ => {
                best.insert(k, i);
            }
        }
    }
    if best.len() == batch.num_rows() {
        return Ok(batch.clone());
    }
    let mut keep: Vec<u32> = best.values().map(|i| *i as u32).collect();
    keep.sort_unstable();
    let indices = arrow::array::UInt32Array::from(keep);
    let cols = batch
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c, &indices, None))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(batch.schema(), cols)
}

/// `batch` sorted by `columns` (ascending, NULLs last); unchanged when there are none. The
/// writer keeps the order within each partition's file, so the file's pages hold ranges of
/// the first column and a filter on it skips pages by their statistics. The sort is stable:
/// rows equal in every column keep their reading order, which the deduplication's "last one
/// read wins" relies on.
pub fn sort_batch(
    batch: &RecordBatch,
    columns: &[String],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if columns.is_empty() || batch.num_rows() < 2 {
        return Ok(batch.clone());
    }
    let keys = columns
        .iter()
        .map(|c| {
            Ok(arrow::compute::SortColumn {
                values: batch.column(batch.schema().index_of(c)?).clone(),
                options: Some(arrow::compute::SortOptions {
                    descending: false,
                    nulls_first: false,
                }),
            })
        })
        .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
    let n = u32::try_from(batch.num_rows()).map_err(|_| {
        arrow::error::ArrowError::ComputeError("a batch to sort holds over 2^32 rows".into())
    })?;
    // The first column is usually a time: sorted as plain integers, which costs a fraction of
    // a comparison through Arrow's comparator; that comparator only breaks the first
    // column's ties.
    let first = &keys[0].values;
    let plain = first.data_type().is_integer() || first.data_type().is_temporal();
    let order: Vec<u32> =
        if plain && arrow::compute::can_cast_types(first.data_type(), &DataType::Int64) {
            let ints = cast(first, &DataType::Int64)?;
            let ints = ints
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .expect("cast to Int64");
            let rest = arrow::compute::LexicographicalComparator::try_new(&keys[1..])?;
            let mut rows: Vec<(bool, i64, u32)> = (0..n)
                .map(|i| {
                    if ints.is_null(i as usize) {
                        (true, 0, i)
                    } else {
                        (false, ints.value(i as usize), i)
                    }
                })
                .collect();
            rows.sort_unstable_by(|a, b| {
                (a.0, a.1)
                    .cmp(&(b.0, b.1))
                    .then_with(|| rest.compare(a.2 as usize, b.2 as usize))
                    .then(a.2.cmp(&b.2))
            });
            rows.into_iter().map(|r| r.2).collect()
        } else {
            let all = arrow::compute::LexicographicalComparator::try_new(&keys)?;
            let mut rows: Vec<u32> = (0..n).collect();
            rows.sort_unstable_by(|a, b| all.compare(*a as usize, *b as usize).then(a.cmp(b)));
            rows
        };
    arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(order))
}

/// How a batch joins the table.
pub enum WriteMode<'a> {
    /// Plain insert: the caller knows none of the keys is stored.
    Append,
    /// Upsert by key; a stored row is replaced when the incoming `order` is newer or equal.
    Merge {
        key: &'a [String],
        order: Option<&'a str>,
    },
    /// Insert the rows whose key is not stored yet (events: idempotent by key).
    InsertNew { key: &'a [String] },
    /// Replace the whole table.
    Replace,
}

/// Sets a builder's Parquet settings when there are some.
macro_rules! with_parquet {
    ($builder:expr, $props:expr) => {
        match $props.clone() {
            Some(p) => $builder.with_writer_properties(p),
            None => $builder,
        }
    };
}

/// Writes `batch` (already deduplicated) to the table in one commit with `props`.
pub async fn write(
    table: DeltaTable,
    name: &str,
    batch: RecordBatch,
    partition: Option<&str>,
    mode: WriteMode<'_>,
    props: CommitProperties,
) -> Result<DeltaTable, WarehouseError> {
    write_with(table, name, batch, partition, mode, props, None).await
}

/// Most bytes of a column's dictionary in a dataset's files (see `writer_properties`).
const DICTIONARY_PAGE_BYTES: usize = 64 << 10;

/// Parquet settings for a dataset's files:
/// - LZ4 (raw): files as small as Snappy's here, but cheaper to write and to read.
/// - Dictionaries of at most 64 KiB (the writer's default is 1 MiB): a column of few values
///   (agencies, procedures, statuses, due dates) keeps its dictionary, and one of nearly
///   unique values (the times a dossier was received, finished, updated: 8 bytes a value in
///   the dictionary plus an index, against 8 plain) falls back to plain values after 8,192 of
///   them instead of 131,072, which makes loads faster and files smaller.
/// - No dictionary for `unique` columns (the key): a dictionary of values that never repeat
///   is only work before the writer gives it up.
/// - `digests` (hashed personal data) are random hex: no dictionary, no compression (it
///   finds nothing to shorten in them), and no statistics (nobody filters on a digest's range,
///   and the min/max comparisons cost more than the rest of writing the column).
pub fn writer_properties(unique: &[String], digests: &[String]) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES);
    for c in unique.iter().chain(digests) {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c.as_str()), false);
    }
    for c in digests {
        let path = ColumnPath::from(c.as_str());
        b = b
            .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
            .set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    b.build()
}

/// `write` with the table's own Parquet settings (`None`: the Delta writer's defaults).
pub async fn write_with(
    table: DeltaTable,
    name: &str,
    batch: RecordBatch,
    partition: Option<&str>,
    mode: WriteMode<'_>,
    props: CommitProperties,
    parquet: Option<WriterProperties>,
) -> Result<DeltaTable, WarehouseError> {
    let err = |source: deltalake::DeltaTableError| WarehouseError::Delta {
        table: name.to_string(),
        source: Box::new(source),
    };
    let batch = to_delta(&batch).map_err(|e| WarehouseError::Data {
        table: name.to_string(),
        message: e.to_string(),
    })?;
    let partitions: Vec<String> = partition.into_iter().map(String::from).collect();
    let fresh = table.version().is_none();
    match mode {
        WriteMode::Replace => with_parquet!(table.write(vec![batch]), parquet)
            .with_save_mode(SaveMode::Overwrite)
            .with_partition_columns(partitions)
            .with_commit_properties(props)
            .await
            .map_err(err),
        // A new table has nothing to merge with, and an empty batch nothing to merge: a plain
        // write, which still commits the watermark and loaded files.
        _ if fresh || batch.num_rows() == 0 || matches!(mode, WriteMode::Append) => {
            with_parquet!(table.write(vec![batch]), parquet)
                .with_save_mode(SaveMode::Append)
                .with_partition_columns(partitions)
                .with_commit_properties(props)
                .await
                .map_err(err)
        }
        WriteMode::Merge { .. } | WriteMode::InsertNew { .. } => {
            let (key, order) = match &mode {
                WriteMode::Merge { key, order } => (*key, *order),
                WriteMode::InsertNew { key } => (*key, None),
                WriteMode::Replace | WriteMode::Append => unreachable!("written above"),
            };
            let insert_only = matches!(mode, WriteMode::InsertNew { .. });
            let data = |e: datafusion::error::DataFusionError| WarehouseError::Data {
                table: name.to_string(),
                message: e.to_string(),
            };
            let Some(p) = partition else {
                return merge(table, batch, key, order, insert_only, None, props, &parquet)
                    .await
                    .map_err(err);
            };
            // A merge scans every file its predicate cannot rule out, and holds a file's rows
            // until it knows whether any matched: on a key alone, that is the whole table, even
            // for a small update. Where each incoming key is stored now, found by reading the
            // key column alone, bounds each merge to those partitions; a row whose partition
            // value changed is still matched where it was stored.
            let stored = stored_partitions(&table, &batch, key, p)
                .await
                .map_err(data)?;
            let stored_rows: std::collections::HashSet<u32> = stored
                .iter()
                .flat_map(|(_, rows)| rows.iter().copied())
                .collect();
            let new_rows: Vec<u32> = (0..batch.num_rows() as u32)
                .filter(|r| !stored_rows.contains(r))
                .collect();
            let take = |rows: &[u32]| {
                arrow::compute::take_record_batch(
                    &batch,
                    &arrow::array::UInt32Array::from(rows.to_vec()),
                )
                .map_err(|e| data(e.into()))
            };
            if stored.is_empty() || insert_only {
                // Nothing to match (or events, whose stored keys are left as they are): the
                // new keys are a plain insert.
                let batch = if stored.is_empty() {
                    batch.clone()
                } else {
                    take(&new_rows)?
                };
                return with_parquet!(table.write(vec![batch]), parquet)
                    .with_save_mode(SaveMode::Append)
                    .with_partition_columns(partitions)
                    .with_commit_properties(props)
                    .await
                    .map_err(err);
            }
            // Updates spread over many partitions (a correction of old dossiers) would make
            // one merge rewrite most of the table at once, holding it in memory. The stored
            // partitions are merged in groups of at most MERGE_SCAN_BYTES of files, each group
            // its own commit; only the last carries the run's marks (watermark, loaded files).
            // A crash between them leaves merges that the rerun, reading from the old
            // watermark, repeats with the same result.
            let groups = merge_groups(&table, stored).map_err(err)?;
            let _memory = crate::alloc::ReturnFreedMemory::hold();
            let mut table = table;
            // Earlier groups carry the run's metadata (its id), not its marks.
            let unmarked = followed(props.clone().with_application_transactions(vec![]));
            let mut props = Some(props);
            let last = groups.len() - 1;
            for (i, (values, mut rows)) in groups.into_iter().enumerate() {
                let props = if i == last {
                    rows.extend_from_slice(&new_rows);
                    props.take().unwrap_or_default()
                } else {
                    unmarked.clone()
                };
                let filter = partition_filter(p, &values);
                table = merge(
                    table,
                    take(&rows)?,
                    key,
                    order,
                    false,
                    Some(filter),
                    props,
                    &parquet,
                )
                .await
                .map_err(err)?;
            }
            Ok(table)
        }
        WriteMode::Append => unreachable!("appends are written above"),
    }
}

/// Most bytes of stored files one merge of an update reads (see `write_with`), unless
/// `PARSTAT_MERGE_SCAN_BYTES` says otherwise: larger groups make a spread update faster but
/// raise its peak memory far more.
const MERGE_SCAN_BYTES: i64 = 64 << 20;

fn merge_scan_bytes() -> Result<i64, deltalake::DeltaTableError> {
    match std::env::var("PARSTAT_MERGE_SCAN_BYTES") {
        Err(_) => Ok(MERGE_SCAN_BYTES),
        Ok(v) => v.trim().parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            deltalake::DeltaTableError::Generic(format!(
                "PARSTAT_MERGE_SCAN_BYTES is `{v}`: set it to a positive number of bytes (the default is {MERGE_SCAN_BYTES}) or unset it"
            ))
        }),
    }
}

/// One upsert (or, `insert_only`, insert of the keys not stored) of `batch` by `key`,
/// restricted to the stored rows that `filter` (SQL over alias `t`) admits.
#[allow(clippy::too_many_arguments)]
async fn merge(
    table: DeltaTable,
    batch: RecordBatch,
    key: &[String],
    order: Option<&str>,
    insert_only: bool,
    filter: Option<String>,
    props: CommitProperties,
    parquet: &Option<WriterProperties>,
) -> Result<DeltaTable, deltalake::DeltaTableError> {
    let columns: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut predicate = key_match(key);
    if let Some(f) = filter {
        predicate = format!("{predicate} AND ({f})");
    }
    let ctx = datafusion::prelude::SessionContext::new();
    let source = ctx.read_batch(batch)?;
    let mut m = with_parquet!(table.merge(source, predicate), parquet)
        .with_source_alias("s")
        .with_target_alias("t")
        .with_commit_properties(props);
    if !insert_only {
        let cols = columns.clone();
        m = m.when_matched_update(|mut u| {
            if let Some(o) = order {
                u = u.predicate(format!("s.{o} >= t.{o}"));
            }
            for c in &cols {
                u = u.update(c.as_str(), format!("s.{c}"));
            }
            u
        })?;
    }
    m = m.when_not_matched_insert(|mut i| {
        for c in &columns {
            i = i.set(c.as_str(), format!("s.{c}"));
        }
        i
    })?;
    m.await.map(|(t, _)| t)
}

/// `t.k = s.k` for each key column, joined by AND: the stored rows (`t`) an incoming row (`s`)
/// matches.
fn key_match(key: &[String]) -> String {
    key.iter()
        .map(|k| format!("t.{k} = s.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Stored partitions (each with the incoming rows whose keys it holds) in groups whose files
/// add up to at most `merge_scan_bytes()`; a partition larger than that is a group alone.
#[allow(clippy::type_complexity)]
fn merge_groups(
    table: &DeltaTable,
    stored: Vec<(datafusion::scalar::ScalarValue, Vec<u32>)>,
) -> Result<Vec<(Vec<datafusion::scalar::ScalarValue>, Vec<u32>)>, deltalake::DeltaTableError> {
    let snapshot = table.snapshot()?;
    let column = snapshot.metadata().partition_columns().first().cloned();
    let mut bytes: HashMap<Option<String>, i64> = HashMap::new();
    for f in snapshot.log_data().iter() {
        let value = column
            .as_ref()
            .and_then(|c| f.partition_values_map().get(c).cloned())
            .flatten();
        *bytes.entry(value).or_default() += f.size();
    }
    let limit = merge_scan_bytes()?;
    let mut groups: Vec<(Vec<datafusion::scalar::ScalarValue>, Vec<u32>, i64)> = Vec::new();
    for (value, rows) in stored {
        let text = (!value.is_null()).then(|| plain(&value).to_string());
        let size = bytes.get(&text).copied().unwrap_or(0);
        match groups.last_mut() {
            Some(g) if g.2 + size <= limit => {
                g.0.push(value);
                g.1.extend(rows);
                g.2 += size;
            }
            _ => groups.push((vec![value], rows, size)),
        }
    }
    Ok(groups.into_iter().map(|(v, r, _)| (v, r)).collect())
}

/// Where the keys of `batch` are stored in `table`: each distinct value of the `partition`
/// column that holds one, with the rows of `batch` whose keys it holds. A join of the incoming
/// keys with the table's key column alone, the incoming keys on the hash side, so that memory
/// holds the keys, never the table.
#[allow(clippy::type_complexity)]
async fn stored_partitions(
    table: &DeltaTable,
    batch: &RecordBatch,
    key: &[String],
    partition: &str,
) -> Result<Vec<(datafusion::scalar::ScalarValue, Vec<u32>)>, datafusion::error::DataFusionError> {
    use datafusion::error::DataFusionError;
    let ctx = datafusion::prelude::SessionContext::new();
    let mut columns = key
        .iter()
        .map(|k| Ok(batch.column(batch.schema().index_of(k)?).clone()))
        .collect::<Result<Vec<ArrayRef>, arrow::error::ArrowError>>()?;
    let mut fields: Vec<_> = key
        .iter()
        .map(|k| Ok(batch.schema().field_with_name(k)?.clone()))
        .collect::<Result<_, arrow::error::ArrowError>>()?;
    columns.push(Arc::new(arrow::array::UInt32Array::from_iter_values(
        0..batch.num_rows() as u32,
    )));
    fields.push(arrow::datatypes::Field::new(
        "parstat_row",
        DataType::UInt32,
        false,
    ));
    ctx.register_batch(
        "s",
        RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), columns)?,
    )?;
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    ctx.register_table("t", provider)?;
    let on = key_match(key);
    let found = ctx
        .sql(&format!(
            "SELECT t.{partition}, s.parstat_row FROM s JOIN t ON {on} ORDER BY t.{partition}"
        ))
        .await?
        .collect()
        .await?;
    let mut out: Vec<(datafusion::scalar::ScalarValue, Vec<u32>)> = Vec::new();
    for b in &found {
        let rows = b
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::UInt32Array>()
            .ok_or_else(|| DataFusionError::Internal("row numbers are not UInt32".into()))?;
        for i in 0..b.num_rows() {
            let value = datafusion::scalar::ScalarValue::try_from_array(b.column(0), i)?;
            match out.last_mut() {
                Some((v, r)) if *v == value => r.push(rows.value(i)),
                _ => out.push((value, vec![rows.value(i)])),
            }
        }
    }
    Ok(out)
}

/// A partition value as read, dictionary-encoded or not: the value itself.
fn plain(v: &datafusion::scalar::ScalarValue) -> &datafusion::scalar::ScalarValue {
    match v {
        datafusion::scalar::ScalarValue::Dictionary(_, inner) => plain(inner),
        v => v,
    }
}

/// `t.<partition> IN (<values>)`, as SQL for a merge predicate, with `OR t.<partition> IS NULL`
/// when a value is null (a null partition value is no member of any list).
fn partition_filter(partition: &str, values: &[datafusion::scalar::ScalarValue]) -> String {
    let literals: Vec<String> = values
        .iter()
        .map(plain)
        .filter(|v| !v.is_null())
        .map(|v| match v.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                format!("'{}'", v.to_string().replace('\'', "''"))
            }
            _ => v.to_string(),
        })
        .collect();
    let mut parts = Vec::new();
    if !literals.is_empty() {
        parts.push(format!("t.{partition} IN ({})", literals.join(", ")));
    }
    if values.iter().any(|v| v.is_null()) {
        parts.push(format!("t.{partition} IS NULL"));
    }
    parts.join(" OR ")
}

/// Makes a warehouse table queryable by SQL under `name` in `ctx`.
pub async fn register(
    ctx: &datafusion::prelude::SessionContext,
    table: &DeltaTable,
    name: &str,
) -> Result<(), WarehouseError> {
    let err = |source: deltalake::DeltaTableError| WarehouseError::Delta {
        table: name.to_string(),
        source: Box::new(source),
    };
    table.update_datafusion_session(&ctx.state()).map_err(err)?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| WarehouseError::Data {
            table: name.to_string(),
            message: e.to_string(),
        })?;
    ctx.register_table(name, provider)
        .map_err(|e| WarehouseError::Data {
            table: name.to_string(),
            message: e.to_string(),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, TimeUnit};

    /// (finished, code, tag) rows as a batch; `tag` tells rows with equal keys apart.
    fn batch(rows: &[(Option<i64>, &str, i64)]) -> RecordBatch {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new(
                "finished",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("code", DataType::Utf8, false),
            Field::new("tag", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// The values of the Int64 column `name` of `b` (the warehouse's tests tell rows apart by one).
    pub(super) fn int64s(b: &RecordBatch, name: &str) -> Vec<i64> {
        b.column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    /// The names of the files in `dir` that end with `suffix`, sorted.
    fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(suffix))
            .collect();
        v.sort();
        v
    }

    fn tags(b: &RecordBatch) -> Vec<i64> {
        int64s(b, "tag")
    }

    #[test]
    fn sorting_puts_nulls_last_breaks_ties_by_the_next_column_and_keeps_equal_rows_in_order() {
        let rows = [
            (None, "b", 0),
            (Some(20), "a", 1),
            (Some(10), "z", 2),
            (None, "a", 3),
            (Some(10), "c", 4),
            (Some(20), "a", 5),
            (None, "a", 6),
            (Some(-5), "q", 7),
        ];
        let by = ["finished".to_string(), "code".to_string()];
        // The time first (NULLs last), then the code, then the reading order.
        assert_eq!(
            tags(&sort_batch(&batch(&rows), &by).unwrap()),
            [7, 4, 2, 1, 5, 3, 6, 0]
        );
        // A text first column takes the general path, with the same rules.
        let by = ["code".to_string(), "finished".to_string()];
        assert_eq!(
            tags(&sort_batch(&batch(&rows), &by).unwrap()),
            [1, 5, 3, 6, 0, 4, 7, 2]
        );
    }

    /// The files a load writes: LZ4 for ordinary columns; the key without a dictionary; a
    /// digest without dictionary, compression or statistics.
    #[tokio::test]
    async fn dataset_files_carry_the_parquet_settings_of_each_kind_of_column() {
        use deltalake::parquet::basic::{Compression, Encoding};
        use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path(), "warehouse").unwrap();
        let table = wh.open("t").await.unwrap();
        let rows: Vec<(Option<i64>, String, i64)> = (0..1_000)
            .map(|i| (Some(i % 7), format!("{i:064x}"), i % 3))
            .collect();
        let rows: Vec<(Option<i64>, &str, i64)> =
            rows.iter().map(|r| (r.0, r.1.as_str(), r.2)).collect();
        let props = writer_properties(&["tag".to_string()], &["code".to_string()]);
        write_with(
            table,
            "t",
            batch(&rows),
            None,
            WriteMode::Append,
            CommitProperties::default(),
            Some(props),
        )
        .await
        .unwrap();
        let footer = |table: &str| {
            let file = std::fs::read_dir(dir.path().join("warehouse").join(table))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == "parquet"))
                .expect("a Parquet file");
            let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
            reader.metadata().clone()
        };
        let meta = footer("t");
        let rg = meta.row_group(0);
        let col = |name: &str| {
            (0..rg.num_columns())
                .map(|i| rg.column(i))
                .find(|c| c.column_path().string() == name)
                .unwrap()
        };
        assert_eq!(col("finished").compression(), Compression::LZ4_RAW);
        assert_eq!(col("tag").compression(), Compression::LZ4_RAW);
        let dictionary = |name: &str| {
            col(name)
                .encodings()
                .any(|e| e == Encoding::RLE_DICTIONARY || e == Encoding::PLAIN_DICTIONARY)
        };
        assert!(
            dictionary("finished"),
            "seven repeated values keep their dictionary"
        );
        assert!(!dictionary("tag"));
        assert!(!dictionary("code"));
        assert_eq!(col("code").compression(), Compression::UNCOMPRESSED);
        assert!(col("code").statistics().is_none());
        assert!(col("finished").statistics().is_some());

        // 20,000 distinct times: the dictionary stops at 64 KiB (8,192 values), not at the
        // 160,000 bytes of all of them.
        let rows: Vec<(Option<i64>, &str, i64)> = (0..20_000).map(|i| (Some(i), "c", 0)).collect();
        write_with(
            wh.open("u").await.unwrap(),
            "u",
            batch(&rows),
            None,
            WriteMode::Append,
            CommitProperties::default(),
            Some(writer_properties(&[], &[])),
        )
        .await
        .unwrap();
        let meta = footer("u");
        let finished = meta.row_group(0).column(0);
        assert_eq!(finished.column_path().string(), "finished");
        let dictionary = finished.data_page_offset() - finished.dictionary_page_offset().unwrap();
        assert!(dictionary < 70_000, "{dictionary} bytes of dictionary");
    }

    #[tokio::test]
    async fn vacuum_deletes_replaced_files_once_their_retention_has_passed() {
        #[derive(Debug)]
        struct Later(i64);
        impl deltalake::operations::vacuum::Clock for Later {
            fn current_timestamp_millis(&self) -> i64 {
                chrono::Utc::now().timestamp_millis() + self.0
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path(), "warehouse").unwrap();
        let files = || names_ending(&dir.path().join("warehouse/t"), ".parquet").len();
        let mut table = wh.open("t").await.unwrap();
        for tag in [1, 2] {
            table = write(
                table,
                "t",
                batch(&[(Some(1), "a", tag), (Some(2), "b", tag)]),
                None,
                WriteMode::Replace,
                CommitProperties::default(),
            )
            .await
            .unwrap();
        }
        assert_eq!(files(), 2, "the replaced file is still on disk");
        // Within the retention period (7 days by default) nothing goes, and nothing commits.
        let version = table.version();
        assert_eq!(vacuum(&table, None, "test").await.unwrap(), 0);
        let day = 24 * 3600 * 1000;
        assert_eq!(
            vacuum(&table, Some(Arc::new(Later(6 * day))), "test")
                .await
                .unwrap(),
            0
        );
        assert_eq!(files(), 2);
        assert_eq!(wh.open("t").await.unwrap().version(), version);
        // Past it, the replaced file goes; the table reads the same.
        assert_eq!(
            vacuum(&table, Some(Arc::new(Later(8 * day))), "test")
                .await
                .unwrap(),
            1
        );
        assert_eq!(files(), 1);
        let table = wh.open("t").await.unwrap();
        assert!(
            table.version() > version,
            "vacuum records itself in the log"
        );
        let ctx = datafusion::prelude::SessionContext::new();
        register(&ctx, &table, "t").await.unwrap();
        let out = ctx
            .sql("SELECT SUM(tag) AS s FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(int64s(&out[0], "s"), [4]);
    }

    /// Commits that another follows write no checkpoint; the one they skipped is written when
    /// the run is done, and a run's last commit writes its own on the interval.
    #[tokio::test]
    async fn a_run_writes_the_checkpoint_its_followed_commits_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path(), "warehouse").unwrap();
        let log = dir.path().join("warehouse/t/_delta_log");
        let checkpoints = || names_ending(&log, ".checkpoint.parquet");
        let rows = batch(&[(Some(1), "a", 1)]);
        // Version 0, with a checkpoint every 2 commits (delta-rs checkpoints v when v + 1 is
        // a multiple of 2); then a run of followed commits, versions 1 to 4.
        let mut table = wh
            .open("t")
            .await
            .unwrap()
            .write(vec![rows.clone()])
            .with_configuration([("delta.checkpointInterval", Some("2"))])
            .with_commit_properties(followed(CommitProperties::default()))
            .await
            .unwrap();
        for _ in 1..=4 {
            table = write(
                table,
                "t",
                rows.clone(),
                None,
                WriteMode::Append,
                followed(CommitProperties::default()),
            )
            .await
            .unwrap();
        }
        assert_eq!(table.version(), Some(4));
        assert!(checkpoints().is_empty(), "{:?}", checkpoints());
        assert!(checkpoint_skipped(&table, Some(0)).await.unwrap());
        assert_eq!(checkpoints(), ["00000000000000000004.checkpoint.parquet"]);
        // A run whose only commit (version 5) is due writes its own; nothing was skipped.
        let table = write(
            table,
            "t",
            rows.clone(),
            None,
            WriteMode::Append,
            CommitProperties::default(),
        )
        .await
        .unwrap();
        assert!(!checkpoint_skipped(&table, Some(4)).await.unwrap());
        assert_eq!(
            checkpoints(),
            [
                "00000000000000000004.checkpoint.parquet",
                "00000000000000000005.checkpoint.parquet"
            ]
        );
        // A run of one commit that is not due (version 6) skips nothing either.
        let table = write(
            table,
            "t",
            rows,
            None,
            WriteMode::Append,
            followed(CommitProperties::default()),
        )
        .await
        .unwrap();
        assert!(!checkpoint_skipped(&table, Some(5)).await.unwrap());
        assert_eq!(checkpoints().len(), 2);
    }

    /// (code, part, v) rows, `part` the partition column.
    fn parted(rows: &[(&str, Option<&str>, i64)]) -> RecordBatch {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("code", DataType::Utf8, false),
            Field::new("part", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    /// The latest commit's operation and metrics, as the Delta log holds them.
    fn last_commit(dir: &Path) -> serde_json::Value {
        let log = dir.join("_delta_log");
        let last = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .max()
            .unwrap();
        std::fs::read_to_string(last)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find_map(|v| v.get("commitInfo").cloned())
            .unwrap()
    }

    #[tokio::test]
    async fn a_merge_reads_only_the_partitions_where_its_keys_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path(), "warehouse").unwrap();
        let path = dir.path().join("warehouse").join("t");
        let mut table = wh.open("t").await.unwrap();
        // One file per partition: A, B, C and the null partition.
        for rows in [
            vec![("a1", Some("A"), 1), ("a2", Some("A"), 2)],
            vec![("b1", Some("B"), 3)],
            vec![("c1", Some("C"), 4), ("c2", Some("C"), 5)],
            vec![("n1", None, 6)],
        ] {
            table = write(
                table,
                "t",
                parted(&rows),
                Some("part"),
                WriteMode::Append,
                CommitProperties::default(),
            )
            .await
            .unwrap();
        }
        let key = ["code".to_string()];
        let merge = || WriteMode::Merge {
            key: &key,
            order: None,
        };
        // a1 moves from A to B, c1 and n1 change, z1 is new: B holds none of these keys.
        let table = write(
            table,
            "t",
            parted(&[
                ("a1", Some("B"), 10),
                ("c1", Some("C"), 11),
                ("n1", None, 12),
                ("z1", Some("D"), 13),
            ]),
            Some("part"),
            merge(),
            CommitProperties::default(),
        )
        .await
        .unwrap();
        let commit = last_commit(&path);
        assert_eq!(commit["operation"], "MERGE");
        let metrics = &commit["operationMetrics"];
        assert_eq!(metrics["num_target_files_scanned"], 3, "{metrics}");
        assert_eq!(metrics["num_target_rows_updated"], 3, "{metrics}");
        assert_eq!(metrics["num_target_rows_inserted"], 1, "{metrics}");
        // Every key once, with the incoming values.
        let ctx = datafusion::prelude::SessionContext::new();
        register(&ctx, &table, "t").await.unwrap();
        let rows = ctx
            .sql("SELECT code, COALESCE(part, '-') AS part, v FROM t ORDER BY code")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string();
        let got: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains("code"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            got,
            [
                "| a1 | B | 10 |",
                "| a2 | A | 2 |",
                "| b1 | B | 3 |",
                "| c1 | C | 11 |",
                "| c2 | C | 5 |",
                "| n1 | - | 12 |",
                "| z1 | D | 13 |",
            ]
        );
        // Keys none of which is stored: an insert, no merge.
        write(
            table,
            "t",
            parted(&[("y1", Some("A"), 20)]),
            Some("part"),
            merge(),
            CommitProperties::default(),
        )
        .await
        .unwrap();
        assert_eq!(last_commit(&path)["operation"], "WRITE");
    }

    #[test]
    fn partition_filters_quote_text_and_match_nulls_apart() {
        use datafusion::scalar::ScalarValue;
        let text = |s: &str| ScalarValue::Utf8(Some(s.to_string()));
        assert_eq!(
            partition_filter(
                "m",
                &[
                    text("2026-10"),
                    ScalarValue::Dictionary(Box::new(DataType::UInt16), Box::new(text("it's"))),
                    ScalarValue::Utf8(None),
                ]
            ),
            "t.m IN ('2026-10', 'it''s') OR t.m IS NULL"
        );
        assert_eq!(
            partition_filter("year", &[ScalarValue::Int16(Some(2019))]),
            "t.year IN (2019)"
        );
    }
}
