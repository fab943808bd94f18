//! The business clock: which instant the jobs take as "now" (periods due, run times, the
//! future-row limit). It is the wall clock, or, for tests, a simulated instant that a test
//! drives through a file, so that the scheduler can be run through months in minutes.
//!
//! `PARSTAT_TEST_CLOCK=FILE` turns simulation on: FILE holds an RFC 3339 instant, which only
//! ever moves forward; `parstat serve` fires the schedules due up to it and, once it has
//! nothing left to do at that instant, writes `FILE.idle` (the instant it finished and the
//! next instant it has something to do). Leases, claims and timeouts keep to the wall clock:
//! they are about processes, not about the business calendar.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};

/// The variable that names the simulated clock's file.
pub const VAR: &str = "PARSTAT_TEST_CLOCK";

fn file() -> Option<&'static Path> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::var_os(VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .as_deref()
}

/// Whether the clock is simulated.
pub fn simulated() -> bool {
    file().is_some()
}

/// Now, by the business clock.
pub fn now() -> DateTime<Utc> {
    match file() {
        None => Utc::now(),
        Some(f) => read(f),
    }
}

/// The simulated instant in `f`. A test replaces the file whole (write, then rename), so a
/// read never sees half of it; a missing or unreadable file is a broken test set-up.
fn read(f: &Path) -> DateTime<Utc> {
    let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{VAR}={}: {e}", f.display()));
    DateTime::parse_from_rfc3339(text.trim())
        .unwrap_or_else(|e| {
            panic!(
                "{VAR}={}: {text:?} is not an RFC 3339 instant: {e}",
                f.display()
            )
        })
        .with_timezone(&Utc)
}

/// What a simulated daemon reports once it has nothing left to do at `at`.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Idle {
    pub at: DateTime<Utc>,
    /// The next instant at which it has something to do (a schedule or a retry).
    pub next: Option<DateTime<Utc>>,
    pub pid: u32,
}

/// Writes `FILE.idle` (simulation only), whole, then renamed.
pub fn report_idle(at: DateTime<Utc>, next: Option<DateTime<Utc>>) {
    let Some(f) = file() else { return };
    let idle = Idle {
        at,
        next,
        pid: std::process::id(),
    };
    let path = idle_path(f);
    let tmp = path.with_extension(format!("idle.{}", std::process::id()));
    let text = serde_json::to_string(&idle).expect("serializable");
    if std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .is_err()
    {
        tracing::warn!(file = %path.display(), "could not report the simulated clock's idle state");
    }
}

/// `FILE.idle` beside the clock file `f`.
pub fn idle_path(f: &Path) -> PathBuf {
    let mut s = f.as_os_str().to_owned();
    s.push(".idle");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_file_sits_beside_the_clock() {
        assert_eq!(
            idle_path(Path::new("/tmp/x/clock")),
            PathBuf::from("/tmp/x/clock.idle")
        );
    }

    #[test]
    fn a_clock_file_is_read_as_an_instant() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("clock");
        std::fs::write(&f, "2026-12-03T07:00:00+07:00\n").unwrap();
        assert_eq!(read(&f).to_rfc3339(), "2026-12-03T00:00:00+00:00");
    }
}
