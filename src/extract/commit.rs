//! Commits of a load: each chunk of typed rows into the dataset's table with its quarantined
//! rows and the marks of the files it completes; the run's last commit also moves the watermark.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::DeltaTable;

use super::{file_id, file_stat_id, watermark_id, ExtractError};
use crate::config::pipeline::{ExtractJob, Mode};
use crate::config::schema::Schema;
use crate::warehouse::quarantine::{self, Rejected};
use crate::warehouse::{self, NewKeys, Warehouse, WriteMode};

/// A file completed by a chunk: its path under the root, content and stat fingerprints.
pub(crate) type FileDone = (String, i64, i64);

/// Writes chunks of typed rows, one at a time, and keeps what a run learns from them (the
/// watermark, the counts, the table's version).
pub(crate) struct Committer {
    /// The typed batches' schema; set once the source announced its columns.
    pub arrow_schema: Option<SchemaRef>,
    pub schema: Schema,
    pub job: ExtractJob,
    pub pipeline: String,
    pub run_id: String,
    pub wh: Warehouse,
    pub table: DeltaTable,
    /// A table empty at the start of the run takes its rows by appends, merging only keys
    /// seen twice in the run (see `NewKeys`).
    pub new_keys: Option<NewKeys>,
    /// Replace mode: every batch of the run, written at once at the end with the marks of
    /// every file read (the next run skips them only if all are marked).
    pub replace_batches: Vec<RecordBatch>,
    pub replace_files: Vec<FileDone>,
    pub parquet: WriterProperties,
    pub max_updated: Option<i64>,
    pub rows_written: u64,
    pub rows_quarantined: u64,
}

impl Committer {
    /// Commits typed `chunk`s with their rejected rows, and marks `files` as loaded in the
    /// same commit; the `last` commit of a run also carries the watermark.
    pub(crate) async fn commit(
        mut self,
        chunk: Vec<(RecordBatch, Vec<Rejected>)>,
        files: Vec<FileDone>,
        last: bool,
    ) -> Result<Committer, ExtractError> {
        let arrow_schema = self
            .arrow_schema
            .clone()
            .ok_or_else(|| ExtractError::Source("no columns from the source".into()))?;
        let (batch, rejected) = gather(&arrow_schema, chunk)?;
        self.within_share(&batch, &rejected, &files)?;
        if let Some(w) = self
            .schema
            .watermark
            .as_deref()
            .and_then(|w| max_micros(&batch, w))
        {
            self.max_updated = Some(self.max_updated.map_or(w, |m| m.max(w)));
        }
        self.rows_quarantined += rejected.len() as u64;
        quarantine::store(
            &self.wh,
            &self.pipeline,
            &self.schema.name,
            &self.run_id,
            &rejected,
        )
        .await?;
        let (batch, files) = if self.job.mode == Mode::Replace {
            // The whole table is replaced at once, at the end.
            self.replace_batches.push(batch);
            self.replace_files.extend(files);
            if !last {
                return Ok(self);
            }
            let all = arrow::compute::concat_batches(&arrow_schema, &self.replace_batches)?;
            (all, std::mem::take(&mut self.replace_files))
        } else {
            (batch, files)
        };
        if self.table.version().is_none() && batch.num_rows() == 0 && !last {
            return Ok(self);
        }
        let marks = self.marks(files, last);
        self.write(batch, marks, last).await?;
        if tracing::enabled!(tracing::Level::DEBUG) {
            // Read only for the debug log: it costs a file read per commit.
            let (rss, committed) = crate::alloc::usage_mib();
            tracing::debug!(rows = self.rows_written, rss_mib = rss, mimalloc_commit_mib = committed, version = ?self.table.version(), "committed");
        }
        Ok(self)
    }

    /// Fails the run when too many of a chunk's rows are invalid: nothing of it is stored.
    fn within_share(
        &self,
        batch: &RecordBatch,
        rejected: &[Rejected],
        files: &[FileDone],
    ) -> Result<(), ExtractError> {
        let total = batch.num_rows() + rejected.len();
        if total == 0 {
            return Ok(());
        }
        let share = rejected.len() as f64 / total as f64;
        if share <= self.job.quarantine_max_share {
            return Ok(());
        }
        let examples = rejected
            .iter()
            .take(3)
            .map(|r| format!("{}: {}", r.position, r.reasons.join(", ")))
            .collect::<Vec<_>>()
            .join(" | ");
        Err(ExtractError::TooManyInvalid {
            what: match files.last() {
                Some(f) => format!("the batch ending with {}", f.0),
                None => format!("the batch read by `{}`", self.pipeline),
            },
            share: share * 100.0,
            max: self.job.quarantine_max_share * 100.0,
            examples,
        })
    }

    /// The application transactions of a commit: the files it completes and, on the last
    /// commit only, the watermark. A crash before the last commit leaves the old watermark,
    /// and the rerun's merge makes rows already stored count once.
    fn marks(&self, files: Vec<FileDone>, last: bool) -> Vec<(String, i64)> {
        let mut txns: Vec<(String, i64)> = files
            .into_iter()
            .flat_map(|(rel, fp, stat)| {
                [
                    (file_id(&self.pipeline, &rel), fp),
                    (file_stat_id(&self.pipeline, &rel), stat),
                ]
            })
            .collect();
        if last {
            if let Some(w) = self.max_updated {
                txns.push((watermark_id(&self.pipeline), w));
            }
        }
        txns
    }

    /// The run and the pipeline, in every commit's metadata.
    fn metadata(&self) -> Vec<(String, serde_json::Value)> {
        vec![
            ("parstat.run_id".to_string(), self.run_id.clone().into()),
            ("parstat.pipeline".to_string(), self.pipeline.clone().into()),
        ]
    }

    fn properties(&self, txns: Vec<(String, i64)>, last: bool) -> CommitProperties {
        let props = warehouse::commit_properties(self.metadata(), txns);
        if last {
            props
        } else {
            warehouse::followed(props)
        }
    }

    /// Sorts, deduplicates and writes `batch` in the job's mode, with `txns` in its commit.
    async fn write(
        &mut self,
        batch: RecordBatch,
        txns: Vec<(String, i64)>,
        last: bool,
    ) -> Result<(), ExtractError> {
        let schema = &self.schema;
        // The key breaks ties, so the same rows give the same files whatever the source.
        let order: Vec<String> = if schema.sort_by.is_empty() {
            vec![]
        } else {
            schema
                .sort_by
                .iter()
                .chain(&schema.primary_key)
                .cloned()
                .collect()
        };
        // Each step replaces the batch, so that only one copy of the chunk is alive at a time.
        let sorted = warehouse::sort_batch(&batch, &order)
            .map_err(|e| ExtractError::Source(format!("sorting by {order:?}: {e}")))?;
        drop(batch);
        let (table, batch, first_seen) = self.split_new_keys(sorted).await?;
        self.rows_written += batch.num_rows() as u64;
        let mode = if first_seen {
            WriteMode::Append
        } else {
            self.mode()
        };
        let props = self.properties(txns, last);
        let partition = self.schema.partition.as_ref().map(|p| p.column.as_str());
        self.table = warehouse::write_with(
            table,
            &self.schema.name,
            batch,
            partition,
            mode,
            props,
            Some(self.parquet.clone()),
        )
        .await?;
        Ok(())
    }

    fn mode(&self) -> WriteMode<'_> {
        let schema = &self.schema;
        match self.job.mode {
            Mode::Merge => WriteMode::Merge {
                key: &schema.primary_key,
                order: schema.watermark.as_deref(),
            },
            Mode::Append => WriteMode::InsertNew {
                key: &schema.primary_key,
            },
            Mode::Replace => WriteMode::Replace,
        }
    }

    /// `batch` deduplicated as a merge requires, and whether it holds only keys the run sees
    /// for the first time in a table that was empty (then a plain append). On such a first
    /// load, first-seen keys are appended at once (without the run's marks: if the merge that
    /// follows does not commit, the rerun reloads the files and merges these rows once), and
    /// only the rest is deduplicated and merged.
    async fn split_new_keys(
        &mut self,
        batch: RecordBatch,
    ) -> Result<(DeltaTable, RecordBatch, bool), ExtractError> {
        let schema = &self.schema;
        let dedup =
            |b: &RecordBatch| warehouse::dedup(b, &schema.primary_key, schema.watermark.as_deref());
        let table = self.table.clone();
        let Some(keys) = self.new_keys.as_mut() else {
            return Ok((table, dedup(&batch)?, false));
        };
        let (new, again) = keys.split(&batch, &schema.primary_key)?;
        if again.num_rows() == 0 {
            return Ok((table, new, true));
        }
        self.rows_written += new.num_rows() as u64;
        let partition = schema.partition.as_ref().map(|p| p.column.as_str());
        let props = warehouse::followed(warehouse::commit_properties(self.metadata(), vec![]));
        let table = warehouse::write_with(
            table,
            &schema.name,
            new,
            partition,
            WriteMode::Append,
            props,
            Some(self.parquet.clone()),
        )
        .await?;
        Ok((table, dedup(&again)?, false))
    }
}

/// A chunk's typed batches as one, and its rejected rows.
fn gather(
    arrow_schema: &SchemaRef,
    chunk: Vec<(RecordBatch, Vec<Rejected>)>,
) -> Result<(RecordBatch, Vec<Rejected>), ExtractError> {
    let mut batches = Vec::with_capacity(chunk.len());
    let mut rejected = Vec::new();
    for (b, r) in chunk {
        batches.push(b);
        rejected.extend(r);
    }
    let batch = arrow::compute::concat_batches(arrow_schema, &batches)?;
    Ok((batch, rejected))
}

fn max_micros(batch: &RecordBatch, column: &str) -> Option<i64> {
    let c = batch.column_by_name(column)?;
    let a = c
        .as_any()
        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()?;
    arrow::compute::max(a)
}
