//! Writing a batch to a table: append, replace, or merge by key (bounded to the partitions
//! where the keys are stored, in groups of bounded size), with the dataset files' Parquet
//! settings.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Schema as ArrowSchema};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use std::collections::HashMap;
use std::sync::Arc;

use super::batches::to_delta;
use super::log::followed;
use super::WarehouseError;

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
    let fresh = table.version().is_none();
    let (key, order, insert_only) = match mode {
        WriteMode::Replace => {
            return plain_write(
                table,
                batch,
                partition,
                SaveMode::Overwrite,
                props,
                &parquet,
            )
            .await
            .map_err(err)
        }
        // A new table has nothing to merge with, and an empty batch nothing to merge: a plain
        // write, which still commits the watermark and loaded files.
        _ if fresh || batch.num_rows() == 0 || matches!(mode, WriteMode::Append) => {
            return plain_write(table, batch, partition, SaveMode::Append, props, &parquet)
                .await
                .map_err(err)
        }
        WriteMode::Merge { key, order } => (key, order, false),
        WriteMode::InsertNew { key } => (key, None, true),
        WriteMode::Append => unreachable!("appends are written above"),
    };
    let merging = Merging {
        name,
        key,
        order,
        insert_only,
        parquet: &parquet,
    };
    match partition {
        None => merge(table, batch, &merging, None, props)
            .await
            .map_err(err),
        Some(p) => merging.by_partition(table, batch, p, props).await,
    }
}

/// One write of `batch` without matching: an append, or the whole table replaced.
async fn plain_write(
    table: DeltaTable,
    batch: RecordBatch,
    partition: Option<&str>,
    save: SaveMode,
    props: CommitProperties,
    parquet: &Option<WriterProperties>,
) -> Result<DeltaTable, deltalake::DeltaTableError> {
    let partitions: Vec<String> = partition.into_iter().map(String::from).collect();
    with_parquet!(table.write(vec![batch]), parquet)
        .with_save_mode(save)
        .with_partition_columns(partitions)
        .with_commit_properties(props)
        .await
}

/// A merge by key: of a table's rows (`Merge`, an upsert) or of its missing keys only
/// (`insert_only`, events).
struct Merging<'a> {
    name: &'a str,
    key: &'a [String],
    order: Option<&'a str>,
    insert_only: bool,
    parquet: &'a Option<WriterProperties>,
}

impl Merging<'_> {
    fn data(&self, e: datafusion::error::DataFusionError) -> WarehouseError {
        WarehouseError::Data {
            table: self.name.to_string(),
            message: e.to_string(),
        }
    }

    fn delta(&self, source: deltalake::DeltaTableError) -> WarehouseError {
        WarehouseError::Delta {
            table: self.name.to_string(),
            source: Box::new(source),
        }
    }

    /// A merge scans every file its predicate cannot rule out, and holds a file's rows until
    /// it knows whether any matched: on a key alone, that is the whole table, even for a small
    /// update. Where each incoming key is stored now, found by reading the key column alone,
    /// bounds each merge to those partitions; a row whose partition value changed is still
    /// matched where it was stored.
    async fn by_partition(
        &self,
        table: DeltaTable,
        batch: RecordBatch,
        p: &str,
        props: CommitProperties,
    ) -> Result<DeltaTable, WarehouseError> {
        let stored = stored_partitions(&table, &batch, self.key, p)
            .await
            .map_err(|e| self.data(e))?;
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
            .map_err(|e| self.data(e.into()))
        };
        if stored.is_empty() || self.insert_only {
            // Nothing to match (or events, whose stored keys are left as they are): the new
            // keys are a plain insert.
            let batch = if stored.is_empty() {
                batch.clone()
            } else {
                take(&new_rows)?
            };
            return plain_write(table, batch, Some(p), SaveMode::Append, props, self.parquet)
                .await
                .map_err(|e| self.delta(e));
        }
        // Updates spread over many partitions (a correction of old dossiers) would make one
        // merge rewrite most of the table at once, holding it in memory. The stored partitions
        // are merged in groups of at most MERGE_SCAN_BYTES of files, each group its own commit;
        // only the last carries the run's marks (watermark, loaded files). A crash between
        // them leaves merges that the rerun, reading from the old watermark, repeats with the
        // same result.
        let groups = merge_groups(&table, stored).map_err(|e| self.delta(e))?;
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
            table = merge(table, take(&rows)?, self, Some(filter), props)
                .await
                .map_err(|e| self.delta(e))?;
        }
        Ok(table)
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

/// One upsert (or, `insert_only`, insert of the keys not stored) of `batch` by its key,
/// restricted to the stored rows that `filter` (SQL over alias `t`) admits.
async fn merge(
    table: DeltaTable,
    batch: RecordBatch,
    how: &Merging<'_>,
    filter: Option<String>,
    props: CommitProperties,
) -> Result<DeltaTable, deltalake::DeltaTableError> {
    let (key, order, insert_only, parquet) = (how.key, how.order, how.insert_only, how.parquet);
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
    let sql =
        format!("SELECT t.{partition}, s.parstat_row FROM s JOIN t ON {on} ORDER BY t.{partition}");
    let found = parstat_plan::collect(parstat_plan::sql(&ctx, &sql).await?).await?;
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
pub(super) fn partition_filter(
    partition: &str,
    values: &[datafusion::scalar::ScalarValue],
) -> String {
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
