//! Extraction: each dataset from where the province keeps it (PostgreSQL, MariaDB, files, a
//! sync API) into its warehouse table, validated row by row against `schemas/`, personal data
//! hashed or dropped, bad rows quarantined, and the watermark committed with the data.

pub mod cell;
mod commit;
pub mod convert;
pub mod file;
mod file_source;
pub mod http;
mod load;
pub mod mysql;
pub mod pii;
pub mod postgres;
mod rules;
mod source;
pub mod tls;
mod typing;

pub use source::{Position, RawRow};
pub(crate) use source::{RowSink, Timeouts};

use std::path::Path;

use crate::config::{Pipeline, Project};
use crate::warehouse::lease::{Busy, Guard, GuardError, RunLease};
use crate::warehouse::WarehouseError;

/// Why an extract failed. Each variant's text already names its cause where it has one
/// (`crate::error::report` shows it once); the cause itself stays reachable as its source.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{0}")]
    Config(String),
    /// What the source sent does not fit (columns, pages, formats): a message, no cause.
    #[error("{0}")]
    Source(String),
    #[error("cannot connect to {source}")]
    Connect {
        #[source]
        source: Cause,
    },
    /// A database or API refused or dropped a step of the run (`what`: which step).
    #[error("{what}: {source}")]
    Peer {
        what: String,
        #[source]
        source: Cause,
    },
    #[error(transparent)]
    Mysql(#[from] mysql_async::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// A task of the run (the source, the typing, the writer) stopped: a panic or a cancel.
    #[error("{what} stopped: {source}")]
    Stopped {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
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

/// The error a database or HTTP client gave.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl ExtractError {
    /// `what` failed in the peer, because of `source`.
    pub(crate) fn peer(what: impl Into<String>, source: impl Into<Cause>) -> Self {
        ExtractError::Peer {
            what: what.into(),
            source: source.into(),
        }
    }

    pub(crate) fn connect(source: impl Into<Cause>) -> Self {
        ExtractError::Connect {
            source: source.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ExtractError::Io {
            path: path.display().to_string(),
            source,
        }
    }
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
    let out = load::run(project, pipeline, opts, run_id, &lease).await;
    lease.release().await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_error_keeps_its_cause_and_reads_the_same() {
        let e = ExtractError::peer("COPY failed", std::io::Error::other("connection reset"));
        assert_eq!(e.to_string(), "COPY failed: connection reset");
        let cause = std::error::Error::source(&e).expect("the cause is kept");
        assert_eq!(cause.to_string(), "connection reset");
        assert_eq!(crate::error::report(&e), "COPY failed: connection reset");
        let c = ExtractError::connect("PostgreSQL at 127.0.0.1:1: connection refused");
        assert_eq!(
            c.to_string(),
            "cannot connect to PostgreSQL at 127.0.0.1:1: connection refused"
        );
        assert!(std::error::Error::source(&c).is_some());
    }
}
