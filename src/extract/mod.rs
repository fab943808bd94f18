//! Extraction: each dataset from where the province keeps it (PostgreSQL, MariaDB, files, a
//! sync API) into its warehouse table, validated row by row against `schemas/`, personal data
//! hashed or dropped, bad rows quarantined, and the watermark committed with the data.

pub mod cell;
pub mod convert;
pub mod file;
pub mod http;
pub mod mysql;
pub mod pii;
pub mod postgres;
mod rules;
pub mod tls;

use arrow::array::RecordBatch;
use chrono::{DateTime, Duration, Offset, TimeZone};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tokio::sync::mpsc;

use crate::config::pipeline::{ExtractJob, Mode, SourceSpec};
use crate::config::schema::{Personal, Schema};
use crate::config::settings::ConnectionKind;
use crate::config::{Pipeline, Project};
use crate::warehouse::lease::{Busy, Guard, GuardError, RunLease};
use crate::warehouse::quarantine::{self, Rejected};
use crate::warehouse::{self, Warehouse, WarehouseError, WriteMode};
use cell::Cell;
use convert::{RowPlan, Scratch};
use pii::Hasher;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Source(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pii(#[from] pii::PiiError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error("pipeline `{0}`: another process took this run's lease (its heartbeats stopped for too long, or it was paused); stopped before the next commit. What was committed stays; run it again once the other run ends")]
    LeaseLost(String),
    #[error("{share:.1}% of the rows of {what} are invalid, above the {max:.1}% allowed (`quarantine_max_share`); nothing of it was stored. First reasons: {examples}")]
    TooManyInvalid {
        what: String,
        share: f64,
        max: f64,
        examples: String,
    },
}

impl ExtractError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ExtractError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Hands rows from an async source to the writer in chunks, announcing the columns first.
pub(crate) struct RowSink {
    tx: mpsc::Sender<Msg>,
    batch: Batch,
    /// Bytes received from the source since the last flush, for the job's summary.
    bytes: u64,
}

/// Rows per message from a source to the typing: small, so that few rows wait as cells.
const SEND_ROWS: usize = 10_000;

/// Text bytes per message at most: rows of long values (each up to `max_record_mb`) are sent
/// sooner, so a message never holds more than this and one row.
const SEND_BYTES: usize = 64 << 20;

/// The rows of the next message to the writer, for every source: full at [`SEND_ROWS`] rows
/// or [`SEND_BYTES`] of text, whichever comes first.
struct Batch {
    rows: Vec<RawRow>,
    /// Text bytes in `rows`; other cells are small and fixed.
    text_bytes: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            rows: Vec::with_capacity(SEND_ROWS),
            text_bytes: 0,
        }
    }

    /// Adds `row`; whether the message is full now.
    fn push(&mut self, row: RawRow) -> bool {
        for c in &row.cells {
            if let Cell::Text(t) = c {
                self.text_bytes += t.len();
            }
        }
        self.rows.push(row);
        self.rows.len() >= SEND_ROWS || self.text_bytes >= SEND_BYTES
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows gathered so far, leaving room for the next message's.
    fn take(&mut self) -> Vec<RawRow> {
        self.text_bytes = 0;
        std::mem::replace(&mut self.rows, Vec::with_capacity(SEND_ROWS))
    }
}

impl RowSink {
    fn new(tx: mpsc::Sender<Msg>) -> Self {
        RowSink {
            tx,
            batch: Batch::new(),
            bytes: 0,
        }
    }

    pub(crate) async fn columns(&mut self, names: Vec<String>) -> Result<(), ExtractError> {
        self.tx
            .send(Msg::Columns(names))
            .await
            .map_err(|_| stopped())
    }

    pub(crate) async fn push(&mut self, row: RawRow) -> Result<(), ExtractError> {
        if self.batch.push(row) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Counts bytes read from the source (the wire or the response bodies).
    pub(crate) fn count_bytes(&mut self, n: u64) {
        self.bytes += n;
    }

    async fn flush(&mut self) -> Result<(), ExtractError> {
        if self.bytes > 0 {
            let n = std::mem::take(&mut self.bytes);
            self.tx.send(Msg::Bytes(n)).await.map_err(|_| stopped())?;
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let rows = self.batch.take();
        self.tx.send(Msg::Rows(rows)).await.map_err(|_| stopped())
    }
}

/// How long a database may take to accept a connection, and to send anything at all while a
/// query runs: a peer that hangs (a half-open connection, a stalled server) fails the run
/// instead of holding it, and its lease, forever.
#[derive(Debug, Clone)]
pub(crate) struct Timeouts {
    pub connection: String,
    pub connect: std::time::Duration,
    pub read: std::time::Duration,
}

impl Timeouts {
    fn of(conn: &crate::config::settings::Connection) -> Timeouts {
        Timeouts {
            connection: conn.name.clone(),
            connect: std::time::Duration::from_secs(conn.connect_timeout_secs),
            read: std::time::Duration::from_secs(conn.timeout_secs),
        }
    }

    pub(crate) async fn connect<T>(
        &self,
        peer: &str,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, ExtractError> {
        tokio::time::timeout(self.connect, f).await.map_err(|_| {
            ExtractError::Source(format!(
                "cannot connect to {peer}: no answer within {} s (`connect_timeout_secs` of connection `{}`)",
                self.connect.as_secs(),
                self.connection
            ))
        })
    }

    pub(crate) async fn read<T>(
        &self,
        peer: &str,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, ExtractError> {
        tokio::time::timeout(self.read, f).await.map_err(|_| {
            ExtractError::Source(format!(
                "{peer} sent nothing for {} s (`timeout_secs` of connection `{}`); the run stopped",
                self.read.as_secs(),
                self.connection
            ))
        })
    }
}

fn stopped() -> ExtractError {
    ExtractError::Source("the writer stopped".into())
}

/// Where a row is in its source. Formatted only when the row is quarantined: most rows are
/// valid, and a string per row would cost an allocation each.
#[derive(Debug, Clone)]
pub enum Position {
    /// `row N` of a query's result.
    Row(u64),
    /// `file:line` of a CSV or NDJSON file.
    Line(std::sync::Arc<str>, u64),
    /// Anything else, already formatted (`file[sheet]:row`, `page P record R`).
    Text(String),
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Row(n) => write!(f, "row {n}"),
            Position::Line(file, n) => write!(f, "{file}:{n}"),
            Position::Text(t) => f.write_str(t),
        }
    }
}

/// One source row: cells in the order of the source's column names, or why it is unreadable.
#[derive(Debug)]
pub struct RawRow {
    pub position: Position,
    pub cells: Vec<Cell>,
    /// Problems found while reading (broken encoding, bad JSON): the row goes to quarantine.
    pub errors: Vec<String>,
    /// The row's shape is wrong (more or fewer fields than the header): no cell can be trusted
    /// to be in its column, so personal text may sit in any of them. Quarantined with every
    /// cell hashed (or dropped), and no value in its reasons.
    pub misshapen: bool,
}

enum Msg {
    /// The names of the cells that follow, in dataset-column terms.
    Columns(Vec<String>),
    Rows(Vec<RawRow>),
    /// A file is complete: mark it as loaded (its content and stat fingerprints) with the
    /// commit.
    FileDone {
        rel: String,
        fingerprint: i64,
        stat: i64,
        bytes: u64,
    },
    FileSkipped,
    /// A loaded file whose content is unchanged under a new stat (touched, copied back, or
    /// loaded before stat marks existed): skipped, its new stat marked with the next commit
    /// so that later runs need not read it.
    FileUnchanged {
        rel: String,
        fingerprint: i64,
        stat: i64,
    },
    /// Bytes read from a database or API source.
    Bytes(u64),
}

#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Reload everything: files already loaded and rows older than the watermark.
    pub full: bool,
    pub progress: bool,
    /// Rows per commit.
    pub chunk_rows: usize,
    /// The daemon's lease, asked before each commit.
    pub guard: Guard,
}

/// What one extract did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub pipeline: String,
    pub dataset: String,
    pub run_id: String,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_quarantined: u64,
    pub files_loaded: u64,
    pub files_skipped: u64,
    pub bytes_read: u64,
    pub seconds: f64,
    /// The new watermark (highest `updated_at` loaded), RFC 3339 in the project's zone.
    pub watermark: Option<String>,
    pub table_version: Option<u64>,
}

pub fn watermark_id(pipeline: &str) -> String {
    format!("parstat.watermark.{pipeline}")
}

pub fn file_id(pipeline: &str, rel: &str) -> String {
    format!("parstat.file.{pipeline}.{rel}")
}

/// The mark of a loaded file's stat fingerprint (`file::stat_fingerprint`).
pub fn file_stat_id(pipeline: &str, rel: &str) -> String {
    format!("parstat.filestat.{pipeline}.{rel}")
}

/// Typed bytes per commit at most: rows of long text commit sooner than `chunk` rows would.
const COMMIT_BYTES: usize = 256 << 20;

/// Rows per commit. With freed memory kept for reuse during a load (`crate::alloc`), a chunk's
/// copies set most of the peak: 150,000 rows keep it well under 1 GiB at the speed of larger
/// chunks (bench/README.md).
const CHUNK_ROWS: usize = 150_000;

/// Runs one extract pipeline, holding its lease: two runs of a pipeline never write at once.
pub async fn run(
    project: &Project,
    pipeline: &Pipeline,
    opts: &ExtractOptions,
) -> Result<Summary, ExtractError> {
    let run_id = uuid::Uuid::now_v7().to_string();
    let lease = match RunLease::take(
        &project.root,
        &project.settings.warehouse_url,
        &pipeline.name,
        &run_id,
    )
    .await?
    {
        Ok(l) => l,
        Err(busy) => return Err(ExtractError::Busy(busy)),
    };
    let out = run_leased(project, pipeline, opts, run_id, &lease).await;
    lease.release().await;
    out
}

async fn run_leased(
    project: &Project,
    pipeline: &Pipeline,
    opts: &ExtractOptions,
    run_id: String,
    lease: &RunLease,
) -> Result<Summary, ExtractError> {
    let started = Instant::now();
    let _memory = crate::alloc::KeepFreedMemory::hold();
    let job = pipeline
        .as_extract()
        .ok_or_else(|| {
            ExtractError::Config(format!("`{}` is not an extract pipeline", pipeline.name))
        })?
        .clone();
    let schema = project
        .schemas
        .get(&job.dataset)
        .ok_or_else(|| ExtractError::Config(format!("unknown dataset `{}`", job.dataset)))?
        .clone();
    let tz = project.settings.timezone;
    let hashed = schema.personal_columns(Personal::Hash);
    let hasher = Hasher::from_env(&schema.name, &hashed)?;
    let wh = Warehouse::new(&project.root, &project.settings.warehouse_url)?;
    let table = wh.open(&schema.name).await?;
    let version_before = table.version();
    let previous = if opts.full {
        None
    } else {
        warehouse::app_version(&table, &watermark_id(&pipeline.name)).await?
    };
    let conn = project
        .settings
        .connections
        .get(&job.connection)
        .ok_or_else(|| ExtractError::Config(format!("unknown connection `{}`", job.connection)))?
        .clone();

    // The source runs in its own task and hands rows over in chunks; the writer below types,
    // validates and commits them. A bounded channel keeps memory bounded.
    let (tx, mut rx) = mpsc::channel::<Msg>(2);
    let chunk = if opts.chunk_rows == 0 {
        CHUNK_ROWS
    } else {
        opts.chunk_rows
    };
    let mut producer = Some(spawn_source(
        project,
        pipeline,
        &job,
        &conn,
        &table_marks(&table, pipeline, &job, project, opts).await?,
        previous,
        tz,
        tx,
    )?);

    let mut summary = Summary {
        pipeline: pipeline.name.clone(),
        dataset: schema.name.clone(),
        run_id: run_id.clone(),
        ..Default::default()
    };
    let mut typing: Option<Typing> = None;
    // Typed batches and their rejected rows since the last commit, and how many rows they hold.
    let mut pending_rows: Vec<(RecordBatch, Vec<Rejected>)> = Vec::new();
    let mut pending_count = 0usize;
    let mut pending_bytes = 0usize;
    let mut pending_files: Vec<(String, i64, i64)> = Vec::new();
    let bar = progress(opts.progress, &pipeline.name);
    let replace = job.mode == Mode::Replace;
    // A table empty at the start of the run takes its rows by appends, merging only keys
    // seen twice in the run (see `NewKeys`).
    let new_keys = if table.version().is_none() && !replace {
        Some(warehouse::NewKeys::new().map_err(|e| {
            ExtractError::Source(format!(
                "creating the new-key file in the temporary folder (TMPDIR): {e}"
            ))
        })?)
    } else {
        None
    };
    // The committer is either here or in flight: while it writes one chunk, this loop types
    // the next, so reading the source, typing and writing the warehouse overlap.
    let mut home = Some(Committer {
        arrow_schema: None,
        schema: schema.clone(),
        job: job.clone(),
        pipeline: pipeline.name.clone(),
        run_id: run_id.clone(),
        wh,
        table,
        new_keys,
        replace_batches: Vec::new(),
        // A one-column key is unique per row, hashed personal data random.
        parquet: warehouse::writer_properties(
            match schema.primary_key.as_slice() {
                [one] => std::slice::from_ref(one),
                _ => &[],
            },
            &hashed,
        ),
        max_updated: previous,
        rows_written: 0,
        rows_quarantined: 0,
    });
    let mut inflight: Option<tokio::task::JoinHandle<Result<Committer, ExtractError>>> = None;
    let finished = async |h: tokio::task::JoinHandle<Result<Committer, ExtractError>>| {
        h.await
            .map_err(|e| ExtractError::Source(format!("the writer task stopped: {e}")))?
    };

    let outcome: Result<(), ExtractError> = async {
        loop {
            let msg = rx.recv().await;
            let last = msg.is_none();
            match msg {
                Some(Msg::Columns(names)) => {
                    if let Some(missing) = missing_required(&schema, &names) {
                        return Err(ExtractError::Source(missing));
                    }
                    let plan = RowPlan::new(&schema, &job, &names, tz, hasher.clone());
                    typing = Some(Typing {
                        rules: rules::Rules::plan(&schema, &plan.schema)?,
                        plan,
                        names,
                        personal: schema
                            .columns
                            .iter()
                            .filter_map(|c| c.personal.map(|p| (c.name.clone(), p)))
                            .collect(),
                        schema: schema.clone(),
                        tz,
                        future_tolerance: Duration::minutes(job.future_tolerance_minutes),
                    });
                }
                Some(Msg::Rows(rows)) => {
                    summary.rows_read += rows.len() as u64;
                    bar.inc(rows.len() as u64);
                    let Some(t) = typing.take() else {
                        return Err(ExtractError::Source(
                            "the source sent rows before its columns".into(),
                        ));
                    };
                    // Rows are typed as they arrive, so that only typed columns wait for the
                    // commit (a row of cells takes several times the memory). Typing is CPU
                    // work: off the async workers, so the source goes on reading meanwhile; the
                    // typing goes to the blocking thread and comes back with the batch.
                    let (t, typed) = tokio::task::spawn_blocking(move || {
                        let typed = t.validate(rows);
                        (t, typed)
                    })
                    .await
                    .map_err(|e| ExtractError::Source(format!("typing the rows stopped: {e}")))?;
                    typing = Some(t);
                    let (batch, rejected) = typed?;
                    pending_count += batch.num_rows() + rejected.len();
                    pending_bytes += batch.get_array_memory_size();
                    pending_rows.push((batch, rejected));
                }
                Some(Msg::FileDone {
                    rel,
                    fingerprint,
                    stat,
                    bytes,
                }) => {
                    summary.files_loaded += 1;
                    summary.bytes_read += bytes;
                    pending_files.push((rel, fingerprint, stat));
                }
                Some(Msg::FileSkipped) => summary.files_skipped += 1,
                Some(Msg::FileUnchanged {
                    rel,
                    fingerprint,
                    stat,
                }) => {
                    summary.files_skipped += 1;
                    pending_files.push((rel, fingerprint, stat));
                }
                Some(Msg::Bytes(n)) => summary.bytes_read += n,
                None => {}
            }
            // Commit every `chunk` rows (small files share a commit, each marked as loaded in
            // it) and at the end, which also carries the watermark.
            if !(last || pending_count >= chunk || pending_bytes >= COMMIT_BYTES) {
                continue;
            }
            if last {
                // A closed channel is also what a failed source leaves: only a source that
                // reported success may have its last commit, which moves the watermark, marks
                // the last files and replaces a table. Chunks committed so far stay; the
                // rerun's merge counts them once.
                if let Some(h) = inflight.take() {
                    home = Some(finished(h).await?);
                }
                if let Some(p) = producer.take() {
                    source_result(p.await)?;
                }
            }
            let moved = home.as_ref().is_some_and(|c| c.max_updated != previous);
            let nothing = pending_rows.is_empty() && pending_files.is_empty() && !(last && moved);
            if nothing || typing.is_none() {
                if last {
                    return Ok(());
                }
                continue;
            }
            if !lease.still_held().await? {
                return Err(ExtractError::LeaseLost(pipeline.name.clone()));
            }
            opts.guard.check("a commit").await?;
            let mut c: Committer = match (home.take(), inflight.take()) {
                (Some(c), _) => c,
                (None, Some(h)) => finished(h).await?,
                (None, None) => unreachable!("the committer is here or in flight"),
            };
            if c.arrow_schema.is_none() {
                c.arrow_schema = typing.as_ref().map(|t| t.plan.schema.clone());
            }
            let rows = std::mem::take(&mut pending_rows);
            pending_count = 0;
            pending_bytes = 0;
            let files = std::mem::take(&mut pending_files);
            let h = tokio::spawn(c.commit(rows, files, last));
            if last {
                home = Some(finished(h).await?);
                return Ok(());
            }
            inflight = Some(h);
        }
    }
    .await;
    if let Err(e) = outcome {
        // Stop the source before reporting; a chunk in flight finishes or fails on its own.
        drop(rx);
        if let Some(p) = producer.take() {
            let _ = p.await;
        }
        if let Some(h) = inflight.take() {
            let _ = h.await;
        }
        return Err(e);
    }
    let committer = home.expect("the last commit came home");
    summary.rows_written = committer.rows_written;
    summary.rows_quarantined = committer.rows_quarantined;
    let max_updated = committer.max_updated;
    let table = committer.table;
    bar.finish_and_clear();
    // Only the run's last commit may write a checkpoint (see `warehouse::followed`): the one
    // skipped on the way, if any, now.
    if warehouse::checkpoint_skipped(&table, version_before).await? {
        tracing::debug!(version = ?table.version(), "checkpoint written");
    }
    // Files this table's earlier runs replaced, once past the retention period. The run's
    // data is committed by now: a failure here only leaves them for the next run.
    match warehouse::vacuum(&table, None, &run_id).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "replaced files deleted"),
        Err(e) => tracing::warn!(error = %e, "replaced files not deleted; the next run retries"),
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.watermark = max_updated
        .and_then(DateTime::from_timestamp_micros)
        .map(|t| t.with_timezone(&tz).to_rfc3339());
    summary.table_version = table.version();
    Ok(summary)
}

/// The source task's outcome: its own error, or why the task itself stopped (a panic).
fn source_result(
    r: Result<Result<(), ExtractError>, tokio::task::JoinError>,
) -> Result<(), ExtractError> {
    match r {
        Ok(r) => r,
        Err(e) => Err(ExtractError::Source(format!(
            "the source task stopped: {e}"
        ))),
    }
}

/// Writes chunks of typed rows, one at a time, and keeps what a run learns from them (the
/// watermark, the counts, the table's version).
struct Committer {
    /// The typed batches' schema; set once the source announced its columns.
    arrow_schema: Option<arrow::datatypes::SchemaRef>,
    schema: Schema,
    job: ExtractJob,
    pipeline: String,
    run_id: String,
    wh: Warehouse,
    table: deltalake::DeltaTable,
    new_keys: Option<warehouse::NewKeys>,
    /// Replace mode: every batch of the run, written at once at the end.
    replace_batches: Vec<RecordBatch>,
    parquet: deltalake::parquet::file::properties::WriterProperties,
    max_updated: Option<i64>,
    rows_written: u64,
    rows_quarantined: u64,
}

impl Committer {
    /// Commits typed `chunk`s with their rejected rows, and marks `files` as loaded in the
    /// same commit; the `last` commit of a run also carries the watermark.
    async fn commit(
        mut self,
        chunk: Vec<(RecordBatch, Vec<Rejected>)>,
        files: Vec<(String, i64, i64)>,
        last: bool,
    ) -> Result<Committer, ExtractError> {
        let arrow_schema = self
            .arrow_schema
            .clone()
            .ok_or_else(|| ExtractError::Source("no columns from the source".into()))?;
        let mut batches = Vec::with_capacity(chunk.len());
        let mut rejected = Vec::new();
        for (b, r) in chunk {
            batches.push(b);
            rejected.extend(r);
        }
        let batch = arrow::compute::concat_batches(&arrow_schema, &batches)
            .map_err(|e| ExtractError::Source(e.to_string()))?;
        drop(batches);
        let what = match files.last() {
            Some(f) => format!("the batch ending with {}", f.0),
            None => format!("the batch read by `{}`", self.pipeline),
        };
        let total = batch.num_rows() + rejected.len();
        if total > 0 {
            let share = rejected.len() as f64 / total as f64;
            if share > self.job.quarantine_max_share {
                let examples = rejected
                    .iter()
                    .take(3)
                    .map(|r| format!("{}: {}", r.position, r.reasons.join(", ")))
                    .collect::<Vec<_>>()
                    .join(" | ");
                return Err(ExtractError::TooManyInvalid {
                    what,
                    share: share * 100.0,
                    max: self.job.quarantine_max_share * 100.0,
                    examples,
                });
            }
        }
        let schema = &self.schema;
        if let Some(w) = schema
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
            &schema.name,
            &self.run_id,
            &rejected,
        )
        .await?;
        let batch = if self.job.mode == Mode::Replace {
            // The whole table is replaced at once, at the end.
            self.replace_batches.push(batch);
            if !last {
                return Ok(self);
            }
            arrow::compute::concat_batches(&arrow_schema, &self.replace_batches)
                .map_err(|e| ExtractError::Source(e.to_string()))?
        } else {
            batch
        };
        // The watermark moves only with the last commit of a run: a crash before it leaves
        // the old watermark, and the rerun's merge makes rows already stored count once.
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
        let meta = vec![
            (
                "parstat.run_id".to_string(),
                serde_json::Value::from(self.run_id.clone()),
            ),
            ("parstat.pipeline".to_string(), self.pipeline.clone().into()),
        ];
        let mode = match self.job.mode {
            Mode::Merge => WriteMode::Merge {
                key: &schema.primary_key,
                order: schema.watermark.as_deref(),
            },
            Mode::Append => WriteMode::InsertNew {
                key: &schema.primary_key,
            },
            Mode::Replace => WriteMode::Replace,
        };
        if self.table.version().is_none() && batch.num_rows() == 0 && !last {
            return Ok(self);
        }
        let partition = schema.partition.as_ref().map(|p| p.column.as_str());
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
        let mut batch = sorted;
        let dedup = |b: &RecordBatch| {
            warehouse::dedup(b, &schema.primary_key, schema.watermark.as_deref())
                .map_err(|e| ExtractError::Source(e.to_string()))
        };
        let mut table = self.table.clone();
        let mode = match self.new_keys.as_mut() {
            Some(keys) => {
                // Keys seen for the first time are unique already: only the rest needs the
                // deduplication a merge requires.
                let (new, again) = keys
                    .split(&batch, &schema.primary_key)
                    .map_err(|e| ExtractError::Source(e.to_string()))?;
                if again.num_rows() > 0 {
                    self.rows_written += new.num_rows() as u64;
                    // Appended without the run's marks: if the merge below does not commit,
                    // the rerun reloads the files and merges these rows once.
                    table = warehouse::write_with(
                        table,
                        &schema.name,
                        new,
                        partition,
                        WriteMode::Append,
                        warehouse::followed(warehouse::commit_properties(meta.clone(), vec![])),
                        Some(self.parquet.clone()),
                    )
                    .await?;
                    batch = dedup(&again)?;
                    mode
                } else {
                    batch = new;
                    WriteMode::Append
                }
            }
            None => {
                batch = dedup(&batch)?;
                mode
            }
        };
        self.rows_written += batch.num_rows() as u64;
        let table = warehouse::write_with(
            table,
            &schema.name,
            batch,
            partition,
            mode,
            if last {
                warehouse::commit_properties(meta, txns)
            } else {
                warehouse::followed(warehouse::commit_properties(meta, txns))
            },
            Some(self.parquet.clone()),
        )
        .await?;
        self.table = table;
        if tracing::enabled!(tracing::Level::DEBUG) {
            // Read only for the debug log: it costs a file read per commit.
            let (rss, committed) = crate::alloc::usage_mib();
            tracing::debug!(rows = self.rows_written, rss_mib = rss, mimalloc_commit_mib = committed, version = ?self.table.version(), "committed");
        }
        Ok(self)
    }
}

/// The required dataset columns the source does not provide, as an error message.
fn missing_required(schema: &Schema, names: &[String]) -> Option<String> {
    let missing: Vec<&str> = schema
        .columns
        .iter()
        .filter(|c| !c.nullable && !names.contains(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    let unexpected: Vec<&str> = names
        .iter()
        .filter(|n| schema.column(n).is_none())
        .map(|s| s.as_str())
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return None;
    }
    let mut m = format!(
        "the source's columns do not match dataset `{}`",
        schema.name
    );
    if !missing.is_empty() {
        m.push_str(&format!("; missing: {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        m.push_str(&format!("; unexpected: {}", unexpected.join(", ")));
    }
    m.push_str(
        ". Name the query's columns as the dataset's (`SELECT ma_ho_so AS dossier_code, ...`)",
    );
    Some(m)
}

fn max_micros(batch: &RecordBatch, column: &str) -> Option<i64> {
    let c = batch.column_by_name(column)?;
    let a = c
        .as_any()
        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()?;
    arrow::compute::max(a)
}

/// What types a source's rows: the plan for its columns, their names, and what the quarantine
/// needs to write a rejected row without personal data.
struct Typing {
    plan: RowPlan,
    rules: rules::Rules,
    names: Vec<String>,
    personal: BTreeMap<String, Personal>,
    schema: Schema,
    tz: chrono_tz::Tz,
    /// How far past now a watermark time may be (`future_tolerance_minutes`).
    future_tolerance: Duration,
}

impl Typing {
    /// Types and validates rows: the valid ones as a batch, the rest with their reasons.
    fn validate(&self, rows: Vec<RawRow>) -> Result<(RecordBatch, Vec<Rejected>), ExtractError> {
        let Typing {
            plan,
            rules,
            names,
            personal,
            schema,
            tz,
            future_tolerance,
        } = self;
        let mut builders = plan.builders(rows.len());
        let mut scratch = Scratch::default();
        let mut rejected = Vec::new();
        let mut kept_rows: Vec<(Position, Vec<Cell>)> = Vec::with_capacity(rows.len());
        for r in rows {
            if r.misshapen {
                rejected.push(Rejected {
                    row_json: plan.safe_json(names, &r.cells, personal, true).to_string(),
                    position: r.position.to_string(),
                    reasons: r.errors,
                });
                continue;
            }
            let mut reasons = r.errors;
            if reasons.is_empty() {
                if let Err(e) = plan.append_row(&r.cells, &mut builders, &mut scratch) {
                    reasons = e;
                }
            } else if let Err(e) = plan.type_row(&r.cells, &mut Vec::new()) {
                // Unreadable already: typed only to list every reason.
                reasons.extend(e);
            }
            if reasons.is_empty() {
                kept_rows.push((r.position, r.cells));
            } else {
                rejected.push(Rejected {
                    row_json: plan.safe_json(names, &r.cells, personal, false).to_string(),
                    position: r.position.to_string(),
                    reasons,
                });
            }
        }
        let batch = plan
            .finish(&mut builders)
            .map_err(|e| ExtractError::Source(e.to_string()))?;
        // Row rules of the schema, evaluated on the typed batch.
        let failures = rules.evaluate(&batch)?;
        let mut why: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (rule, rows) in schema.rules.iter().zip(&failures) {
            for &i in rows {
                why.entry(i)
                    .or_default()
                    .push(format!("rule {}: {}", rule.name, rule.message));
            }
        }
        // A watermark time from the future would pin the watermark there and hide every row
        // updated until then: such rows wait in the quarantine instead.
        if let Some(column) = schema.watermark.as_deref() {
            let limit = (crate::clock::now() + *future_tolerance).timestamp_micros();
            let times = batch.column_by_name(column).and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            });
            for (i, t) in times.iter().flat_map(|a| a.iter()).enumerate() {
                let Some(t) = t.filter(|&t| t > limit) else {
                    continue;
                };
                let shown = DateTime::from_timestamp_micros(t)
                    .map(|t| t.with_timezone(tz).format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| t.to_string());
                why.entry(i).or_default().push(format!(
                    "{column}: {shown} is in the future (later than now plus {} minutes, `future_tolerance_minutes`); correct the source's clock or value",
                    future_tolerance.num_minutes()
                ));
            }
        }
        if why.is_empty() {
            return Ok((batch, rejected));
        }
        let mut keep = vec![true; batch.num_rows()];
        for &i in why.keys() {
            keep[i] = false;
        }
        for (i, reasons) in why {
            let (position, cells) = &kept_rows[i];
            rejected.push(Rejected {
                position: position.to_string(),
                row_json: plan.safe_json(names, cells, personal, false).to_string(),
                reasons,
            });
        }
        let mask = arrow::array::BooleanArray::from(keep);
        let batch = arrow::compute::filter_record_batch(&batch, &mask)
            .map_err(|e| ExtractError::Source(e.to_string()))?;
        Ok((batch, rejected))
    }
}

fn progress(enabled: bool, name: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>20} {spinner} {human_pos} rows ({per_sec})")
            .expect("valid template"),
    );
    pb.set_message(name.to_string());
    pb
}

/// Fingerprints of files already loaded, read from the table's transactions.
async fn table_marks(
    table: &deltalake::DeltaTable,
    pipeline: &Pipeline,
    job: &ExtractJob,
    project: &Project,
    opts: &ExtractOptions,
) -> Result<BTreeMap<String, FileMark>, ExtractError> {
    let mut out = BTreeMap::new();
    if opts.full {
        return Ok(out);
    }
    if let SourceSpec::Files { path, .. } = &job.source {
        let root = file_root(project, job)?;
        for (_, rel) in file::matching_files(&root, path)? {
            if let Some(content) =
                warehouse::app_version(table, &file_id(&pipeline.name, &rel)).await?
            {
                // Files loaded before stat marks existed have none: hashed once more.
                let stat =
                    warehouse::app_version(table, &file_stat_id(&pipeline.name, &rel)).await?;
                out.insert(rel, FileMark { content, stat });
            }
        }
    }
    Ok(out)
}

/// What a run does with one matching file, decided from its stat and, when that changed, its
/// content: a loaded file whose stat is unchanged is not read again; one whose stat changed is
/// hashed, and skipped if its content did not change.
enum FileState {
    Skip,
    /// Skipped, its new stat marked with the next commit.
    Unchanged {
        fingerprint: i64,
        stat: i64,
    },
    Load {
        fingerprint: i64,
        stat: i64,
    },
}

impl FileState {
    fn of(path: &Path, mark: Option<&FileMark>) -> Result<FileState, ExtractError> {
        let stat = file::stat_fingerprint(path)?;
        if mark.is_some_and(|m| m.stat == Some(stat)) {
            return Ok(FileState::Skip);
        }
        let fingerprint = file::fingerprint(path)?;
        Ok(if mark.is_some_and(|m| m.content == fingerprint) {
            FileState::Unchanged { fingerprint, stat }
        } else {
            FileState::Load { fingerprint, stat }
        })
    }

    /// The same file, read whatever its marks say (a replace that reads every file).
    fn load(self, path: &Path) -> Result<FileState, ExtractError> {
        Ok(match self {
            FileState::Skip => FileState::of(path, None)?,
            FileState::Unchanged { fingerprint, stat } => FileState::Load { fingerprint, stat },
            load @ FileState::Load { .. } => load,
        })
    }
}

/// What the table says of a loaded file: its content fingerprint and, when recorded, its
/// stat fingerprint.
#[derive(Debug, Clone, Copy)]
struct FileMark {
    content: i64,
    stat: Option<i64>,
}

fn file_root(project: &Project, job: &ExtractJob) -> Result<std::path::PathBuf, ExtractError> {
    let conn = &project.settings.connections[&job.connection];
    Ok(match &conn.root {
        None => project.root.clone(),
        Some(r) => project.root.join(
            r.resolve()
                .map_err(|e| ExtractError::Config(e.to_string()))?
                .expose(),
        ),
    })
}

#[allow(clippy::too_many_arguments)]
fn spawn_source(
    project: &Project,
    pipeline: &Pipeline,
    job: &ExtractJob,
    conn: &crate::config::settings::Connection,
    loaded: &BTreeMap<String, FileMark>,
    watermark: Option<i64>,
    tz: chrono_tz::Tz,
    tx: mpsc::Sender<Msg>,
) -> Result<tokio::task::JoinHandle<Result<(), ExtractError>>, ExtractError> {
    // Rows updated since the watermark minus the overlap; everything on a first or full run.
    // An instant; each source gets it in the form it compares (see `postgres::watermark_literal`
    // and `mysql::stream`).
    let since = watermark
        .map(|w| {
            w - Duration::minutes(job.overlap_minutes)
                .num_microseconds()
                .unwrap_or(0)
        })
        .and_then(DateTime::from_timestamp_micros)
        .unwrap_or_else(|| {
            chrono::NaiveDate::from_ymd_opt(1900, 1, 1)
                .expect("valid")
                .and_hms_opt(0, 0, 0)
                .expect("valid")
                .and_utc()
        })
        .with_timezone(&tz);
    let since_local = since.naive_local();
    // The project zone's offset now: Vietnam's has not changed since 1975.
    let utc_offset = tz
        .offset_from_utc_datetime(&chrono::Utc::now().naive_utc())
        .fix()
        .to_string();
    let _ = pipeline;
    match (&job.source, conn.kind) {
        (
            SourceSpec::Files {
                path,
                format,
                sheet,
                header_row,
                delimiter,
            },
            ConnectionKind::File,
        ) => {
            let root = file_root(project, job)?;
            let files = file::matching_files(&root, path)?;
            let columns: Vec<String> = job.columns.keys().cloned().collect();
            let (job, loaded, format, sheet, header_row, delimiter) = (
                job.clone(),
                loaded.clone(),
                *format,
                sheet.clone(),
                *header_row,
                *delimiter,
            );
            Ok(tokio::task::spawn_blocking(move || {
                tx.blocking_send(Msg::Columns(columns.clone())).ok();
                // A replace writes the whole table from what the run read: once any file is
                // new or changed, every file is read again, or the unchanged ones' rows would
                // be dropped from the table. Other modes look at each file just before
                // reading it, while it is still in the page cache from its hashing.
                let decided: Option<Vec<FileState>> = if job.mode == Mode::Replace {
                    let states = files
                        .iter()
                        .map(|(path, rel)| FileState::of(path, loaded.get(rel)))
                        .collect::<Result<Vec<_>, _>>()?;
                    Some(
                        if states.iter().any(|s| matches!(s, FileState::Load { .. })) {
                            files
                                .iter()
                                .zip(states)
                                .map(|((path, _), s)| s.load(path))
                                .collect::<Result<Vec<_>, _>>()?
                        } else {
                            states
                        },
                    )
                } else {
                    None
                };
                let mut decided = decided.map(Vec::into_iter);
                for (path, rel) in files {
                    let state = match decided.as_mut().and_then(|d| d.next()) {
                        Some(s) => s,
                        None => FileState::of(&path, loaded.get(&rel))?,
                    };
                    let (fp, stat) = match state {
                        FileState::Skip => {
                            tx.blocking_send(Msg::FileSkipped).ok();
                            continue;
                        }
                        FileState::Unchanged { fingerprint, stat } => {
                            tx.blocking_send(Msg::FileUnchanged {
                                rel,
                                fingerprint,
                                stat,
                            })
                            .ok();
                            continue;
                        }
                        FileState::Load { fingerprint, stat } => (fingerprint, stat),
                    };
                    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    let mut batch = Batch::new();
                    let mut send = |r: RawRow| -> Result<(), ExtractError> {
                        if batch.push(r) {
                            tx.blocking_send(Msg::Rows(batch.take()))
                                .map_err(|_| stopped())?;
                        }
                        Ok(())
                    };
                    file::read_file(
                        &path,
                        &rel,
                        &job,
                        &columns,
                        format,
                        sheet.as_deref(),
                        header_row,
                        delimiter,
                        &mut send,
                    )?;
                    if !batch.is_empty() {
                        tx.blocking_send(Msg::Rows(batch.take()))
                            .map_err(|_| stopped())?;
                    }
                    tx.blocking_send(Msg::FileDone {
                        rel,
                        fingerprint: fp,
                        stat,
                        bytes,
                    })
                    .map_err(|_| stopped())?;
                }
                Ok(())
            }))
        }
        (
            SourceSpec::Query { query },
            kind @ (ConnectionKind::Postgres | ConnectionKind::Mysql),
        ) => {
            let url = conn
                .url
                .as_ref()
                .ok_or_else(|| {
                    ExtractError::Config(format!("connection `{}` has no url", conn.name))
                })?
                .resolve()
                .map_err(|e| ExtractError::Config(e.to_string()))?;
            let query = query.clone();
            let limits = Timeouts::of(conn);
            let dropped = project
                .schemas
                .get(&job.dataset)
                .map(|s| s.personal_columns(Personal::Drop))
                .unwrap_or_default();
            Ok(tokio::spawn(async move {
                let mut sink = RowSink::new(tx);
                match kind {
                    ConnectionKind::Postgres => {
                        let q = query.replace("$watermark", &postgres::watermark_literal(&since));
                        postgres::stream(url.expose(), &q, &dropped, tz.name(), &limits, &mut sink)
                            .await?
                    }
                    _ => {
                        mysql::stream(
                            url.expose(),
                            &query,
                            since_local,
                            &utc_offset,
                            &limits,
                            &mut sink,
                        )
                        .await?
                    }
                }
                sink.flush().await
            }))
        }
        (SourceSpec::Http { endpoint, records }, ConnectionKind::Http) => {
            let resolve = |v: &Option<crate::config::settings::EnvValue>| -> Result<Option<String>, ExtractError> {
                v.as_ref().map(|v| v.resolve().map(|s| s.expose().to_string()).map_err(|e| ExtractError::Config(e.to_string()))).transpose()
            };
            let url = resolve(&conn.url)?.ok_or_else(|| {
                ExtractError::Config(format!("connection `{}` has no url", conn.name))
            })?;
            let token = resolve(&conn.token)?;
            let (endpoint, records, job) = (endpoint.clone(), records.clone(), job.clone());
            let (page_size, timeout) = (
                conn.page_size,
                std::time::Duration::from_secs(conn.timeout_secs),
            );
            let columns: Vec<String> = job.columns.keys().cloned().collect();
            let limits = http::Limits::of(conn);
            Ok(tokio::spawn(async move {
                let mut sink = RowSink::new(tx);
                let src = http::HttpSource {
                    base_url: &url,
                    endpoint: &endpoint,
                    records: records.as_deref(),
                    token: token.as_deref(),
                    page_size,
                    timeout,
                    limits,
                };
                http::stream(&src, &job, &columns, since_local, &mut sink).await?;
                sink.flush().await
            }))
        }
        _ => Err(ExtractError::Config(format!(
            "pipeline `{}` does not fit connection `{}`",
            pipeline.name, conn.name
        ))),
    }
}
