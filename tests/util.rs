//! Helpers: a temporary copy of the demo project, running the binary, positions in text.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's own project folder (parstat.toml, pipelines/, schemas/, sql/, reports/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A temporary copy of the demo project's configuration (no generated data).
pub fn project_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("parstat.toml"), dir.path().join("parstat.toml")).unwrap();
    for sub in ["pipelines", "schemas", "sql", "reports"] {
        if repo().join(sub).is_dir() {
            copy_dir(&repo().join(sub), &dir.path().join(sub));
        }
    }
    dir
}

pub fn parstat(project: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(project)
        .args(args)
        .env_remove("PARSTAT_SMTP_USER")
        .env_remove("PARSTAT_SMTP_PASSWORD")
        .env_remove("MOTCUA_DATABASE_URL")
        .output()
        .expect("run parstat")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// 1-based line and column (in characters) of the first occurrence of `needle` in `text`.
pub fn pos(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map(|i| i + 1).unwrap_or(0)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Replaces `from` by `to` in a project file (which must contain it) and returns the new text.
pub fn edit(project: &Path, file: &str, from: &str, to: &str) -> String {
    let p = project.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} does not contain {from:?}");
    let new = text.replacen(from, to, 1);
    std::fs::write(&p, &new).unwrap();
    new
}

/// The number of commits in a Delta table's log folder (0 before the first).
pub fn delta_commits(log: &Path) -> usize {
    std::fs::read_dir(log)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// The hashing key the tests extract with.
pub const KEY: &str = "test-key-0123456789abcdef";

/// Runs parstat on `project` with the hashing key set.
pub fn run(project: &Path, args: &[&str]) -> Output {
    run_with(project, args, &[])
}

/// [`run`] with more environment variables (a connection's URL, a setting).
pub fn run_with(project: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(project)
        .args(args)
        .env("PARSTAT_PII_KEY", KEY)
        .envs(env.iter().copied())
        .output()
        .expect("run parstat")
}

/// Its stdout, after asserting that it succeeded.
pub fn ok(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr:\n{}\nstdout:\n{}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

/// The month before today in Hà Tĩnh (UTC+7), `YYYY-MM`: what `previous_month` jobs report on.
pub fn previous_month_label() -> String {
    use chrono::Datelike;
    let local = (chrono::Utc::now() + chrono::Duration::hours(7)).date_naive();
    let (y, m) = if local.month() == 1 {
        (local.year() - 1, 12)
    } else {
        (local.year(), local.month() - 1)
    };
    format!("{y:04}-{m:02}")
}

/// `parstat report REPORT --period PERIOD --preview OUT`, which must succeed; its stdout.
pub fn preview(project: &Path, report: &str, period: &str, out: &Path) -> String {
    ok(run(
        project,
        &[
            "report",
            report,
            "--period",
            period,
            "--preview",
            out.to_str().unwrap(),
        ],
    ))
}

/// One line of `parstat runs list`.
pub struct RunLine {
    pub id: String,
    pub job: String,
    /// `YYYY-MM` for a report; empty for an extract.
    pub period: String,
    pub status: String,
    pub sent: i64,
}

/// Every run `parstat runs list` shows, newest first.
pub fn run_lines(project: &Path) -> Vec<RunLine> {
    let list = ok(run(project, &["runs", "list", "--limit", "100000"]));
    list.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // run, job, [period], status, ...: extracts have no period.
            let (period, status) = if f[2].len() == 7 && f[2].contains('-') {
                (f[2].to_string(), f[3].to_string())
            } else {
                (String::new(), f[2].to_string())
            };
            RunLine {
                id: f[0].to_string(),
                job: f[1].to_string(),
                period,
                status,
                sent: f.last().unwrap().parse().unwrap(),
            }
        })
        .collect()
}

/// Every file below `dir`, with its bytes.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}
