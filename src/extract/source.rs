//! Where rows come from: the `Source` every kind of source implements (files, PostgreSQL,
//! MariaDB, the sync API), the messages it sends the loader, and the choice of source for a job.

use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::cell::Cell;
use super::file_source::FileSource;
use super::{http, mysql, postgres, ExtractError};
use crate::config::pipeline::{ExtractJob, SourceSpec};
use crate::config::schema::Personal;
use crate::config::settings::{Connection, ConnectionKind, EnvValue};
use crate::config::Project;

/// A place rows come from. It reads in a task of its own and sends the loader its column
/// names, then its rows in messages of bounded size and, for files, what became of each file;
/// the loader types, validates and commits them. The task's result says whether the source
/// read everything: only then may the run's last commit move the watermark.
pub(crate) trait Source: Send {
    fn spawn(self: Box<Self>, tx: mpsc::Sender<Msg>) -> JoinHandle<Result<(), ExtractError>>;
}

/// A source read by async I/O (a database, an API): it reads into a sink, in a task of its
/// own, and what it gathered last is sent when it is done.
#[async_trait::async_trait]
pub(crate) trait Reading: Send + Sync + 'static {
    async fn read(&self, sink: &mut RowSink) -> Result<(), ExtractError>;
}

impl<T: Reading> Source for T {
    fn spawn(self: Box<Self>, tx: mpsc::Sender<Msg>) -> JoinHandle<Result<(), ExtractError>> {
        tokio::spawn(async move {
            let mut sink = RowSink::new(tx);
            self.read(&mut sink).await?;
            sink.flush().await
        })
    }
}

/// Where a run starts reading: the watermark minus the overlap (everything on a first or full
/// run), in the project's zone. Each source compares it in its own form.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub since: DateTime<Tz>,
}

impl Start {
    pub(crate) fn new(watermark: Option<i64>, overlap_minutes: i64, tz: Tz) -> Start {
        let since = watermark
            .map(|w| {
                w - Duration::minutes(overlap_minutes)
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
        Start { since }
    }

    /// The local wall time (MariaDB's session and the sync API compare local times).
    pub(crate) fn local(&self) -> NaiveDateTime {
        self.since.naive_local()
    }

    /// The zone's offset now, as MariaDB's `time_zone` takes it: Vietnam's has not changed
    /// since 1975.
    pub(crate) fn utc_offset(&self) -> String {
        self.since
            .timezone()
            .offset_from_utc_datetime(&chrono::Utc::now().naive_utc())
            .fix()
            .to_string()
    }
}

/// The source of `job` on `conn` from `start`; a file source also learns from `table` which
/// files are loaded (none on a `full` run).
pub(crate) async fn open(
    project: &Project,
    pipeline: &str,
    job: &ExtractJob,
    conn: &Connection,
    table: &deltalake::DeltaTable,
    full: bool,
    start: &Start,
) -> Result<Box<dyn Source>, ExtractError> {
    let tz = start.since.timezone();
    Ok(match (&job.source, conn.kind) {
        (SourceSpec::Files { .. }, ConnectionKind::File) => {
            Box::new(FileSource::open(project, pipeline, job, table, full).await?)
        }
        (SourceSpec::Query { query }, ConnectionKind::Postgres) => Box::new(postgres::Query {
            url: required_url(conn)?,
            query: query.replace("$watermark", &postgres::watermark_literal(&start.since)),
            dropped: project
                .schemas
                .get(&job.dataset)
                .map(|s| s.personal_columns(Personal::Drop))
                .unwrap_or_default(),
            timezone: tz.name().to_string(),
            limits: Timeouts::of(conn),
        }),
        (SourceSpec::Query { query }, ConnectionKind::Mysql) => Box::new(mysql::Query {
            url: required_url(conn)?,
            query: query.clone(),
            since: start.local(),
            utc_offset: start.utc_offset(),
            limits: Timeouts::of(conn),
        }),
        (SourceSpec::Http { endpoint, records }, ConnectionKind::Http) => {
            Box::new(http::HttpSource {
                base_url: required_url(conn)?,
                endpoint: endpoint.clone(),
                records: records.clone(),
                token: resolved(&conn.token)?,
                page_size: conn.page_size,
                timeout: std::time::Duration::from_secs(conn.timeout_secs),
                limits: http::Limits::of(conn),
                job: job.clone(),
                since: start.local(),
            })
        }
        _ => {
            return Err(ExtractError::Config(format!(
                "pipeline `{pipeline}` does not fit connection `{}`",
                conn.name
            )))
        }
    })
}

fn resolved(v: &Option<EnvValue>) -> Result<Option<String>, ExtractError> {
    v.as_ref()
        .map(|v| {
            v.resolve()
                .map(|s| s.expose().to_string())
                .map_err(|e| ExtractError::Config(e.to_string()))
        })
        .transpose()
}

fn required_url(conn: &Connection) -> Result<String, ExtractError> {
    resolved(&conn.url)?
        .ok_or_else(|| ExtractError::Config(format!("connection `{}` has no url", conn.name)))
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
pub(crate) struct Batch {
    rows: Vec<RawRow>,
    /// Text bytes in `rows`; other cells are small and fixed.
    text_bytes: usize,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        Batch {
            rows: Vec::with_capacity(SEND_ROWS),
            text_bytes: 0,
        }
    }

    /// Adds `row`; whether the message is full now.
    pub(crate) fn push(&mut self, row: RawRow) -> bool {
        for c in &row.cells {
            if let Cell::Text(t) = c {
                self.text_bytes += t.len();
            }
        }
        self.rows.push(row);
        self.rows.len() >= SEND_ROWS || self.text_bytes >= SEND_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows gathered so far, leaving room for the next message's.
    pub(crate) fn take(&mut self) -> Vec<RawRow> {
        self.text_bytes = 0;
        std::mem::replace(&mut self.rows, Vec::with_capacity(SEND_ROWS))
    }
}

impl RowSink {
    pub(crate) fn new(tx: mpsc::Sender<Msg>) -> Self {
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

    /// Sends what is gathered; every async source ends with it.
    pub(crate) async fn flush(&mut self) -> Result<(), ExtractError> {
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
    pub(crate) fn of(conn: &Connection) -> Timeouts {
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

pub(crate) fn stopped() -> ExtractError {
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

pub(crate) enum Msg {
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
