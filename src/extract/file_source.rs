//! The file source: the files matching a job's glob, each read unless the table marks it as
//! loaded (by its stat, then by its content), and each marked as loaded in the commit that
//! stores its rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::source::{stopped, Batch, Msg, Source};
use super::{file, file_id, file_stat_id, ExtractError, RawRow};
use crate::config::pipeline::{ExtractJob, Mode, SourceSpec};
use crate::config::Project;
use crate::warehouse;

pub(crate) struct FileSource {
    job: ExtractJob,
    /// The matching files: full path and path under the connection's root.
    files: Vec<(PathBuf, String)>,
    marks: BTreeMap<String, FileMark>,
}

impl FileSource {
    /// The files matching `job`'s glob, listed once, with what `table` says of those already
    /// loaded (nothing on a `full` run, which reloads them all).
    pub(crate) async fn open(
        project: &Project,
        pipeline: &str,
        job: &ExtractJob,
        table: &deltalake::DeltaTable,
        full: bool,
    ) -> Result<FileSource, ExtractError> {
        let SourceSpec::Files { path, .. } = &job.source else {
            return Err(ExtractError::Config(format!(
                "dataset `{}`: not a file source",
                job.dataset
            )));
        };
        let files = file::matching_files(&file_root(project, job)?, path)?;
        let marks = if full {
            BTreeMap::new()
        } else {
            table_marks(table, pipeline, &files).await?
        };
        Ok(FileSource {
            files,
            job: job.clone(),
            marks,
        })
    }

    /// What becomes of every file, decided before reading any, for a replace: it writes the
    /// whole table from what the run read, so once any file is new or changed every file is
    /// read again, or the unchanged ones' rows would be dropped from the table. `None` for the
    /// other modes, which look at each file just before reading it, while it is still in the
    /// page cache from its hashing.
    fn decided(&self) -> Result<Option<Vec<FileState>>, ExtractError> {
        if self.job.mode != Mode::Replace {
            return Ok(None);
        }
        let states = self
            .files
            .iter()
            .map(|(path, rel)| FileState::of(path, self.marks.get(rel)))
            .collect::<Result<Vec<_>, _>>()?;
        if !states.iter().any(|s| matches!(s, FileState::Load { .. })) {
            return Ok(Some(states));
        }
        self.files
            .iter()
            .zip(states)
            .map(|((path, _), s)| s.load(path))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn read(self, tx: &mpsc::Sender<Msg>) -> Result<(), ExtractError> {
        let columns: Vec<String> = self.job.columns.keys().cloned().collect();
        tx.blocking_send(Msg::Columns(columns.clone())).ok();
        let mut decided = self.decided()?.map(Vec::into_iter);
        for (path, rel) in &self.files {
            let state = match decided.as_mut().and_then(|d| d.next()) {
                Some(s) => s,
                None => FileState::of(path, self.marks.get(rel))?,
            };
            let (fingerprint, stat) = match state {
                FileState::Skip => {
                    tx.blocking_send(Msg::FileSkipped).ok();
                    continue;
                }
                FileState::Unchanged { fingerprint, stat } => {
                    let rel = rel.clone();
                    let unchanged = Msg::FileUnchanged {
                        rel,
                        fingerprint,
                        stat,
                    };
                    tx.blocking_send(unchanged).ok();
                    continue;
                }
                FileState::Load { fingerprint, stat } => (fingerprint, stat),
            };
            let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let mut batch = Batch::new();
            let mut send = |r: RawRow| -> Result<(), ExtractError> {
                if batch.push(r) {
                    tx.blocking_send(Msg::Rows(batch.take()))
                        .map_err(|_| stopped())?;
                }
                Ok(())
            };
            file::read_file(path, rel, &self.job, &columns, &mut send)?;
            if !batch.is_empty() {
                tx.blocking_send(Msg::Rows(batch.take()))
                    .map_err(|_| stopped())?;
            }
            let done = Msg::FileDone {
                rel: rel.clone(),
                fingerprint,
                stat,
                bytes,
            };
            tx.blocking_send(done).map_err(|_| stopped())?;
        }
        Ok(())
    }
}

impl Source for FileSource {
    fn spawn(self: Box<Self>, tx: mpsc::Sender<Msg>) -> JoinHandle<Result<(), ExtractError>> {
        // Reading and hashing files is blocking work.
        tokio::task::spawn_blocking(move || self.read(&tx))
    }
}

/// Fingerprints of `files` already loaded, read from the table's transactions.
async fn table_marks(
    table: &deltalake::DeltaTable,
    pipeline: &str,
    files: &[(PathBuf, String)],
) -> Result<BTreeMap<String, FileMark>, ExtractError> {
    let mut out = BTreeMap::new();
    for (_, rel) in files {
        if let Some(content) = warehouse::app_version(table, &file_id(pipeline, rel)).await? {
            // Files loaded before stat marks existed have none: hashed once more.
            let stat = warehouse::app_version(table, &file_stat_id(pipeline, rel)).await?;
            out.insert(rel.clone(), FileMark { content, stat });
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
