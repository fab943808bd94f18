//! Hostile report SQL: an expression chaining thousands of operators, which DataFusion plans
//! by recursion and which aborted the whole process with a stack overflow. It is refused on
//! every path (report, backfill on the runtime's workers, check, query) naming the file, the
//! line and what to write instead, and nothing published changes; a chain at the limit runs.

use std::path::Path;

use crate::report::demo_project;
use crate::util::*;

/// The most operators parstat lets one expression chain (`query::MAX_CHAIN`).
const LIMIT: usize = 1000;

/// trend_monthly.sql with its current period's `received` plus `n` zeros: the same figures,
/// `n` operators in one expression. Returns the SQL file's text.
fn chain_in_trend(p: &Path, n: usize) -> String {
    edit(
        p,
        "sql/par/trend_monthly.sql",
        "AS period, received,",
        &format!("AS period, received{} AS received,", " + 0".repeat(n)),
    )
}

/// Every file of the published tables, with its bytes.
fn published(p: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(p.join("warehouse")).unwrap() {
        let path = e.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("published_")
        {
            all.extend(files_under(&path));
        }
    }
    all.sort();
    all
}

/// Exited with `code` (not killed by a signal, as a stack overflow aborts), and said where
/// and what to do.
fn refused(o: &std::process::Output, what: &str, line: usize, code: i32) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{what}: {:?}\n{err}", o.status);
    for needle in [
        "sql/par/trend_monthly.sql".to_string(),
        format!("line {line},"),
        format!("chains more than {LIMIT} operators"),
        "`column IN (...)`".to_string(),
    ] {
        assert!(err.contains(&needle), "{what}: no {needle:?} in\n{err}");
    }
    assert!(!err.contains("overflow"), "{what}:\n{err}");
}

#[test]
fn a_chain_of_thousands_of_operators_is_refused_everywhere_and_publishes_nothing() {
    let p = demo_project();
    ok(run(
        p.path(),
        &[
            "backfill",
            "monthly_par",
            "--from",
            "2021-10",
            "--to",
            "2021-11",
        ],
    ));
    let before = published(p.path());
    assert!(!before.is_empty());
    let text = chain_in_trend(p.path(), 20_000);
    let (line, _) = pos(&text, "received + 0");

    // Bad SQL is bad configuration (2); a backfill's failed job is a failed job (1).
    let o = run(p.path(), &["report", "monthly_par", "--period", "2021-12"]);
    refused(&o, "report", line, 2);
    // The backfill runs its jobs on the runtime's worker threads (2021-11 is done: skipped).
    let o = run(
        p.path(),
        &[
            "backfill",
            "monthly_par",
            "--from",
            "2021-11",
            "--to",
            "2021-12",
        ],
    );
    refused(&o, "backfill", line, 1);
    let o = run(p.path(), &["check"]);
    refused(&o, "check", line, 2);
    // `check` points at the operator where the chain crosses the limit, on that line.
    assert!(
        stderr(&o).contains(&format!("sql/par/trend_monthly.sql:{line}:")),
        "{}",
        stderr(&o)
    );
    assert_eq!(published(p.path()), before, "a published table changed");

    // The analyst's own query: refused the same way, with the query's line.
    let sql = format!("SELECT 1{} AS x FROM dossier", " OR 1 = 1".repeat(600));
    let o = run(p.path(), &["query", &sql]);
    let err = stderr(&o);
    assert!(
        o.status.code().is_some_and(|c| c != 0),
        "{:?}\n{err}",
        o.status
    );
    assert!(err.contains("line 1, column"), "{err}");
    assert!(
        err.contains(&format!("chains more than {LIMIT} operators")),
        "{err}"
    );
}

#[test]
fn a_chain_at_the_limit_runs_on_the_workers_with_the_same_figures() {
    let p = demo_project();
    let plain = p.path().join("plain");
    preview(p.path(), "monthly_par", "2021-12", &plain);
    chain_in_trend(p.path(), LIMIT);
    // The backfill's job runs on a worker thread; it publishes and sends nothing else.
    let out = ok(run(
        p.path(),
        &[
            "backfill",
            "monthly_par",
            "--from",
            "2021-12",
            "--to",
            "2021-12",
        ],
    ));
    assert!(out.contains("backfill: 1 succeeded, 0 failed"), "{out}");
    let chained = p.path().join("chained");
    preview(p.path(), "monthly_par", "2021-12", &chained);
    assert_eq!(
        std::fs::read(plain.join("trend_monthly.csv")).unwrap(),
        std::fs::read(chained.join("trend_monthly.csv")).unwrap()
    );
}
