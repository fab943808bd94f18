//! The loader: one extract run, from its source's messages to its table. Reading the source,
//! typing the rows and writing the table overlap; the commits follow one another, and only a
//! source that read everything lets the last one move the watermark.

use arrow::array::RecordBatch;
use chrono::DateTime;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::commit::{Committer, FileDone};
use super::pii::Hasher;
use super::source::{self, Msg, Start};
use super::typing::Typing;
use super::{watermark_id, ExtractError, ExtractOptions, Summary};
use crate::config::pipeline::{ExtractJob, Mode};
use crate::config::schema::{Personal, Schema};
use crate::config::{Pipeline, Project};
use crate::warehouse::lease::RunLease;
use crate::warehouse::quarantine::Rejected;
use crate::warehouse::{self, Warehouse};

/// Typed bytes per commit at most: rows of long text commit sooner than `chunk` rows would.
const COMMIT_BYTES: usize = 256 << 20;

/// Rows per commit. A chunk's copies set most of a load's peak memory (bench/README.md).
const CHUNK_ROWS: usize = 150_000;

/// The first commits of a first load take an eighth, a quarter, then half of the default
/// chunk: the writer starts while the source is still read, instead of idling through a chunk.
const RAMP_COMMITS: usize = 3;

type Writing = JoinHandle<Result<Committer, ExtractError>>;

/// The committer is either here or writing a chunk: while it writes one, the loader types
/// the next.
enum Slot {
    Here(Box<Committer>),
    Writing(Writing),
    Taken,
}

impl Slot {
    async fn take(&mut self) -> Result<Committer, ExtractError> {
        match std::mem::replace(self, Slot::Taken) {
            Slot::Here(c) => Ok(*c),
            Slot::Writing(h) => written(h).await,
            Slot::Taken => unreachable!("the committer is here or writing"),
        }
    }

    /// The committer back home, once the chunk it writes (if any) is written.
    async fn settle(&mut self) -> Result<(), ExtractError> {
        if matches!(self, Slot::Writing(_)) {
            let c = self.take().await?;
            *self = Slot::Here(Box::new(c));
        }
        Ok(())
    }
}

async fn written(h: Writing) -> Result<Committer, ExtractError> {
    h.await.map_err(|source| ExtractError::Stopped {
        what: "the writer task",
        source,
    })?
}

/// Typed rows and loaded files since the last commit.
#[derive(Default)]
struct Pending {
    rows: Vec<(RecordBatch, Vec<Rejected>)>,
    /// Rows in `rows`, valid or not.
    count: usize,
    bytes: usize,
    files: Vec<FileDone>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.files.is_empty()
    }
}

/// One run of an extract pipeline under its lease. Long: it gathers what the loader needs in
/// one place, so that the loader owns the whole run from there.
pub(super) async fn run(
    project: &Project,
    pipeline: &Pipeline,
    opts: &ExtractOptions,
    run_id: String,
    lease: &RunLease,
) -> Result<Summary, ExtractError> {
    let started = Instant::now();
    let _memory = crate::alloc::KeepFreedMemory::hold();
    let (job, schema) = job_and_schema(project, pipeline)?;
    let conn = project
        .settings
        .connections
        .get(&job.connection)
        .ok_or_else(|| ExtractError::Config(format!("unknown connection `{}`", job.connection)))?
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
    let start = Start::new(previous, job.overlap_minutes, tz);
    let src = source::open(
        project,
        &pipeline.name,
        &job,
        &conn,
        &table,
        opts.full,
        &start,
    )
    .await?;
    // A bounded channel keeps memory bounded while the source reads ahead.
    let (tx, mut rx) = mpsc::channel::<Msg>(2);
    let producer = src.spawn(tx);
    let committer = Committer {
        arrow_schema: None,
        parquet: writer_properties(&schema, &hashed),
        new_keys: first_load_keys(&table, &job)?,
        schema: schema.clone(),
        job: job.clone(),
        pipeline: pipeline.name.clone(),
        run_id: run_id.clone(),
        wh,
        table,
        replace_batches: Vec::new(),
        replace_files: Vec::new(),
        max_updated: previous,
        rows_written: 0,
        rows_quarantined: 0,
    };
    let mut loader = Loader {
        summary: Summary {
            pipeline: pipeline.name.clone(),
            dataset: schema.name.clone(),
            run_id,
            ..Default::default()
        },
        chunk: if opts.chunk_rows == 0 {
            CHUNK_ROWS
        } else {
            opts.chunk_rows
        },
        ramp: opts.chunk_rows == 0 && committer.new_keys.is_some(),
        commits: 0,
        bar: progress(opts.progress, &pipeline.name),
        schema,
        job,
        tz,
        hasher,
        typing: None,
        pending: Pending::default(),
        slot: Slot::Here(Box::new(committer)),
        producer: Some(producer),
        previous,
    };
    if let Err(e) = loader.drive(&mut rx, pipeline, lease, opts).await {
        // Stop the source before reporting; a chunk being written finishes or fails on its own.
        drop(rx);
        loader.abandon().await;
        return Err(e);
    }
    loader.finish(version_before, started).await
}

fn job_and_schema(
    project: &Project,
    pipeline: &Pipeline,
) -> Result<(ExtractJob, Schema), ExtractError> {
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
    Ok((job, schema))
}

/// The Parquet settings of the dataset's files: a one-column key is unique per row, hashed
/// personal data random.
fn writer_properties(
    schema: &Schema,
    hashed: &[String],
) -> deltalake::parquet::file::properties::WriterProperties {
    let unique = match schema.primary_key.as_slice() {
        [one] => std::slice::from_ref(one),
        _ => &[],
    };
    warehouse::writer_properties(unique, hashed)
}

/// A table empty at the start of the run takes its rows by appends, merging only keys seen
/// twice in the run (see `NewKeys`).
fn first_load_keys(
    table: &deltalake::DeltaTable,
    job: &ExtractJob,
) -> Result<Option<warehouse::NewKeys>, ExtractError> {
    if table.version().is_some() || job.mode == Mode::Replace {
        return Ok(None);
    }
    warehouse::NewKeys::new().map(Some).map_err(|e| {
        ExtractError::Source(format!(
            "creating the new-key file in the temporary folder (TMPDIR): {e}"
        ))
    })
}

struct Loader {
    summary: Summary,
    /// Rows per commit.
    chunk: usize,
    /// Whether the first commits are smaller (a first load with the default chunk).
    ramp: bool,
    /// Commits started so far.
    commits: usize,
    bar: indicatif::ProgressBar,
    schema: Schema,
    job: ExtractJob,
    tz: chrono_tz::Tz,
    hasher: Option<Hasher>,
    /// Set once the source announced its columns.
    typing: Option<Typing>,
    pending: Pending,
    slot: Slot,
    /// The source's task, until its result is known.
    producer: Option<JoinHandle<Result<(), ExtractError>>>,
    /// The watermark before the run.
    previous: Option<i64>,
}

impl Loader {
    /// Takes the source's messages until it ends, committing every `chunk` rows (small files
    /// share a commit, each marked as loaded in it) and at the end, which also carries the
    /// watermark.
    async fn drive(
        &mut self,
        rx: &mut mpsc::Receiver<Msg>,
        pipeline: &Pipeline,
        lease: &RunLease,
        opts: &ExtractOptions,
    ) -> Result<(), ExtractError> {
        loop {
            let msg = rx.recv().await;
            let last = msg.is_none();
            if let Some(msg) = msg {
                self.receive(msg).await?;
            }
            let due =
                self.pending.count >= self.commit_rows() || self.pending.bytes >= COMMIT_BYTES;
            if !(last || due) {
                continue;
            }
            if last {
                // A closed channel is also what a failed source leaves: only a source that
                // reported success may have its last commit, which moves the watermark, marks
                // the last files and replaces a table. Chunks committed so far stay; the
                // rerun's merge counts them once.
                self.slot.settle().await?;
                if let Some(p) = self.producer.take() {
                    source_result(p.await)?;
                }
            }
            let moved = matches!(&self.slot, Slot::Here(c) if c.max_updated != self.previous);
            let nothing = self.pending.is_empty() && !(last && moved);
            if nothing || self.typing.is_none() {
                if last {
                    return Ok(());
                }
                continue;
            }
            if !lease.still_held().await? {
                return Err(ExtractError::LeaseLost(pipeline.name.clone()));
            }
            opts.guard.check("a commit").await?;
            let mut c = self.slot.take().await?;
            if c.arrow_schema.is_none() {
                c.arrow_schema = self.typing.as_ref().map(Typing::arrow_schema);
            }
            let pending = std::mem::take(&mut self.pending);
            let h = tokio::spawn(c.commit(pending.rows, pending.files, last));
            self.commits += 1;
            if last {
                self.slot = Slot::Here(Box::new(written(h).await?));
                return Ok(());
            }
            self.slot = Slot::Writing(h);
        }
    }

    /// Rows that make the next commit due.
    fn commit_rows(&self) -> usize {
        if self.ramp && self.commits < RAMP_COMMITS {
            self.chunk >> (RAMP_COMMITS - self.commits)
        } else {
            self.chunk
        }
    }

    async fn receive(&mut self, msg: Msg) -> Result<(), ExtractError> {
        match msg {
            Msg::Columns(names) => {
                let t = Typing::new(&self.schema, &self.job, names, self.tz, self.hasher.clone())?;
                self.typing = Some(t);
            }
            Msg::Rows(rows) => self.type_rows(rows).await?,
            Msg::FileDone {
                rel,
                fingerprint,
                stat,
                bytes,
            } => {
                self.summary.files_loaded += 1;
                self.summary.bytes_read += bytes;
                self.pending.files.push((rel, fingerprint, stat));
            }
            Msg::FileSkipped => self.summary.files_skipped += 1,
            Msg::FileUnchanged {
                rel,
                fingerprint,
                stat,
            } => {
                self.summary.files_skipped += 1;
                self.pending.files.push((rel, fingerprint, stat));
            }
            Msg::Bytes(n) => self.summary.bytes_read += n,
        }
        Ok(())
    }

    /// Rows are typed as they arrive, so that only typed columns wait for the commit (a row
    /// of cells takes several times the memory). Typing is CPU work: off the async workers,
    /// so the source goes on reading meanwhile.
    async fn type_rows(&mut self, rows: Vec<super::RawRow>) -> Result<(), ExtractError> {
        self.summary.rows_read += rows.len() as u64;
        self.bar.inc(rows.len() as u64);
        let Some(t) = self.typing.take() else {
            return Err(ExtractError::Source(
                "the source sent rows before its columns".into(),
            ));
        };
        let (t, typed) = tokio::task::spawn_blocking(move || {
            let typed = t.validate(rows);
            (t, typed)
        })
        .await
        .map_err(|source| ExtractError::Stopped {
            what: "typing the rows",
            source,
        })?;
        self.typing = Some(t);
        let (batch, rejected) = typed?;
        self.pending.count += batch.num_rows() + rejected.len();
        self.pending.bytes += batch.get_array_memory_size();
        self.pending.rows.push((batch, rejected));
        Ok(())
    }

    /// After a failure: waits for the source and for a chunk being written to stop.
    async fn abandon(&mut self) {
        if let Some(p) = self.producer.take() {
            let _ = p.await;
        }
        if let Slot::Writing(h) = std::mem::replace(&mut self.slot, Slot::Taken) {
            let _ = h.await;
        }
    }

    /// The run's upkeep once its last commit is in, and its summary.
    async fn finish(
        mut self,
        version_before: Option<u64>,
        started: Instant,
    ) -> Result<Summary, ExtractError> {
        let committer = self.slot.take().await?;
        let mut summary = self.summary;
        summary.rows_written = committer.rows_written;
        summary.rows_quarantined = committer.rows_quarantined;
        let table = committer.table;
        self.bar.finish_and_clear();
        // Only the run's last commit may write a checkpoint (see `warehouse::followed`): the
        // one skipped on the way, if any, now.
        if warehouse::checkpoint_skipped(&table, version_before).await? {
            tracing::debug!(version = ?table.version(), "checkpoint written");
        }
        // Files this table's earlier runs replaced, once past the retention period. The run's
        // data is committed by now: a failure here only leaves them for the next run.
        match warehouse::vacuum(&table, None, &summary.run_id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "replaced files deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "replaced files not deleted; the next run retries")
            }
        }
        summary.seconds = started.elapsed().as_secs_f64();
        summary.watermark = committer
            .max_updated
            .and_then(DateTime::from_timestamp_micros)
            .map(|t| t.with_timezone(&self.tz).to_rfc3339());
        summary.table_version = table.version();
        Ok(summary)
    }
}

/// The source task's outcome: its own error, or why the task itself stopped (a panic).
fn source_result(
    r: Result<Result<(), ExtractError>, tokio::task::JoinError>,
) -> Result<(), ExtractError> {
    match r {
        Ok(r) => r,
        Err(source) => Err(ExtractError::Stopped {
            what: "the source task",
            source,
        }),
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
