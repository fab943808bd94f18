//! Backfills and run history: the plan, a backfill killed with SIGKILL and rerun giving the
//! same published results as an uninterrupted one with no email sent, `runs list` and
//! `runs show`, and the demo's whole job ending with the latest month in the outbox.

use std::path::Path;
use std::process::{Command, Stdio};

use datafusion::prelude::SessionContext;

use crate::report::demo_project;
use crate::util::*;

const RANGE: [&str; 5] = ["--from", "2021-01", "--to", "2021-12", "--all"];

fn backfill(project: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["backfill"];
    args.extend_from_slice(&RANGE);
    args.extend_from_slice(extra);
    run(project, &args)
}

/// Every published table, without the columns that name the run, in a stable order.
async fn published(project: &Path) -> String {
    let ctx = SessionContext::new();
    let mut names = Vec::new();
    for e in std::fs::read_dir(project.join("warehouse")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("published_") && p.join("_delta_log").is_dir() {
            let url = url::Url::from_directory_path(p.canonicalize().unwrap()).unwrap();
            let t = deltalake::DeltaTable::try_from_url(url).await.unwrap();
            parstat::warehouse::register(&ctx, &t, &name).await.unwrap();
            names.push(name);
        }
    }
    names.sort();
    let mut out = String::new();
    for n in &names {
        let df = ctx.table(n.as_str()).await.unwrap();
        let df = df.drop_columns(&["run_id", "published_at"]).unwrap();
        let cols: Vec<datafusion::prelude::Expr> = df
            .schema()
            .fields()
            .iter()
            .map(|f| datafusion::prelude::col(format!("\"{}\"", f.name())))
            .collect();
        let df = df
            .sort(cols.into_iter().map(|c| c.sort(true, true)).collect())
            .unwrap();
        let batches = df.collect().await.unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        out.push_str(&format!("== {n}: {rows} rows\n"));
        out.push_str(
            &datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_backfill_reruns_to_the_same_results_without_email() {
    // The reference: the same demo data, backfilled without interruption.
    let reference = demo_project();
    let text = ok(backfill(reference.path(), &["--dry-run"]));
    assert!(
        text.contains("plan: 24 job-periods, 24 to run, 0 already done; no email will be sent"),
        "{text}"
    );
    assert!(
        !reference
            .path()
            .join("warehouse/published_dossier_monthly")
            .exists(),
        "a dry run runs nothing"
    );
    ok(backfill(reference.path(), &[]));

    let p = demo_project();
    let log = p.path().join("warehouse/_runs/_delta_log");
    let commits = || delta_commits(&log);
    // The extracts are in the history already.
    let before = commits();
    let mut child = Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(p.path())
        .arg("backfill")
        .args(RANGE)
        .env("PARSTAT_PII_KEY", "test-key-0123456789abcdef")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a few periods are recorded, in the middle of the rest.
    let started = std::time::Instant::now();
    loop {
        if commits() >= before + 4 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "the backfill made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let text = ok(backfill(p.path(), &[]));
    let done: usize = text
        .lines()
        .find(|l| l.starts_with("backfill:"))
        .and_then(|l| l.split(", ").nth(2))
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(done >= 4, "the rerun skipped what had succeeded: {text}");
    assert!(text.contains("0 failed"), "{text}");
    // A third run has nothing left to do.
    let again = ok(backfill(p.path(), &[]));
    assert!(again.contains("24 already done"), "{again}");

    assert_eq!(published(p.path()).await, published(reference.path()).await);
    for dir in [p.path(), reference.path()] {
        assert!(!dir.join("outbox").exists(), "a backfill sends no email");
    }
}

#[test]
fn runs_are_listed_and_shown() {
    let p = demo_project();
    ok(run(
        p.path(),
        &["report", "monthly_investment", "--period", "2021-10"],
    ));
    let bad = edit(
        p.path(),
        "sql/par/late_procedures.sql",
        "MAX(procedure_name) AS procedure_name",
        "MAX(procedure_nam) AS procedure_name",
    );
    assert!(bad.contains("procedure_nam)"));
    let o = run(p.path(), &["report", "monthly_par", "--period", "2021-10"]);
    assert_eq!(o.status.code(), Some(2));
    let list = ok(run(p.path(), &["runs", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].contains("status"), "{list}");
    let failed = lines
        .iter()
        .find(|l| l.contains("monthly_par") && l.contains("failed"))
        .unwrap_or_else(|| panic!("{list}"));
    let ok_line = lines
        .iter()
        .find(|l| {
            l.contains("monthly_investment") && l.contains("2021-10") && l.contains("succeeded")
        })
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        ok_line.split_whitespace().nth(8) == Some("2"),
        "two deliveries: {ok_line}"
    );
    let failed_id = failed.split_whitespace().next().unwrap();
    let show = ok(run(p.path(), &["runs", "show", failed_id]));
    assert!(show.contains("procedure_nam"), "{show}");
    let ok_id = ok_line.split_whitespace().next().unwrap();
    let show = ok(run(p.path(), &["runs", "show", ok_id]));
    assert!(
        show.contains("province_equals_sum_of_capital_sources"),
        "{show}"
    );
    assert!(show.contains("chu-tich@example.gov.vn"), "{show}");
    let o = run(p.path(), &["runs", "show", "nope"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_demo_runs_the_whole_job_into_the_outbox() {
    let p = project_copy();
    let out = ok(run(
        p.path(),
        &["demo", "--dossiers", "5000", "--until", "2026-10"],
    ));
    assert!(
        out.contains("backfill 2025-10..2026-09: 24 published"),
        "{out}"
    );
    for f in [
        "outbox/monthly_par/2026-10/chu-tich@example.gov.vn.eml",
        "outbox/monthly_investment/2026-10/chu-tich@example.gov.vn.eml",
    ] {
        assert!(out.contains(p.path().join(f).to_str().unwrap()), "{out}");
        assert!(p.path().join(f).is_file());
    }
    // Only the latest month was sent: the history was published silently.
    let sent: Vec<_> = std::fs::read_dir(p.path().join("outbox/monthly_par"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
}

#[test]
fn run_does_a_periods_jobs_once() {
    let p = demo_project();
    let first = ok(run(p.path(), &["run", "--period", "2021-10"]));
    assert!(first.contains("monthly_par 2021-10: runs"), "{first}");
    assert!(
        first.contains("run: 2 succeeded, 0 failed, 0 already done"),
        "{first}"
    );
    assert!(p
        .path()
        .join("outbox/monthly_par/2021-10/chu-tich@example.gov.vn.eml")
        .is_file());
    let again = ok(run(p.path(), &["run", "--period", "2021-10"]));
    assert!(
        again.contains("run: 0 succeeded, 0 failed, 2 already done"),
        "{again}"
    );
    let o = run(p.path(), &["run"]);
    assert_eq!(o.status.code(), Some(2), "--period or --due is required");
}

#[test]
fn a_backfill_sends_only_with_send_and_run_due_picks_the_due_period() {
    let p = demo_project();
    ok(run(
        p.path(),
        &[
            "backfill",
            "monthly_investment",
            "--from",
            "2021-09",
            "--to",
            "2021-10",
        ],
    ));
    assert!(!p.path().join("outbox").exists(), "no email without --send");
    let text = ok(run(
        p.path(),
        &[
            "backfill",
            "monthly_par",
            "--from",
            "2021-09",
            "--to",
            "2021-10",
            "--send",
        ],
    ));
    assert!(text.contains("emails will be sent"), "{text}");
    for m in ["2021-09", "2021-10"] {
        assert!(p
            .path()
            .join(format!(
                "outbox/monthly_par/{m}/chu-tich@example.gov.vn.eml"
            ))
            .is_file());
    }
    assert!(!p.path().join("outbox/monthly_investment").exists());
    // --due: each report's previous month, today in Hà Tĩnh.
    let due = ok(run(p.path(), &["run", "--due"]));
    let prev = previous_month_label();
    assert!(due.contains(&format!("monthly_par {prev}: runs")), "{due}");
    assert!(
        due.contains(&format!("monthly_investment {prev}: runs")),
        "{due}"
    );
}
