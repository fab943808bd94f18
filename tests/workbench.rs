//! The analyst's workbench: `parstat test` (data tests and report unit tests), the interactive
//! `query` prompt and its piped twin, and the manual's worked example of adding a report (docs/reports.md).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::report::{demo_data, demo_project};
use crate::util::{edit, ok, pos, project_copy, run, stderr, stdout};

fn append(project: &Path, file: &str, text: &str) {
    let p = project.join(file);
    let mut old = std::fs::read_to_string(&p).unwrap();
    old.push_str(text);
    std::fs::write(p, old).unwrap();
}

#[test]
fn the_demo_projects_own_tests_pass_and_cover_every_dataset_and_both_reports() {
    let p = demo_project();
    let out = ok(run(p.path(), &["test"]));
    for dataset in [
        "dossier",
        "satisfaction_vote",
        "investment_event",
        "investment_disbursement",
        "rating",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("PASS") && l.contains(&format!("  {dataset}: "))),
            "no passing data test of {dataset}:\n{out}"
        );
    }
    for report in ["monthly_par", "monthly_investment"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("PASS") && l.contains(&format!("  {report} "))),
            "no passing unit test of {report}:\n{out}"
        );
    }
    assert!(!out.contains("FAIL"), "{out}");
    // The relationship between votes and dossiers is tested for real: every vote's dossier.
    assert!(
        out.contains("satisfaction_vote: relationships(dossier_code → dossier.dossier_code)"),
        "{out}"
    );
    let summary = out.lines().last().unwrap();
    assert!(summary.ends_with("0 failed"), "{summary}");
}

#[test]
fn failing_data_tests_show_their_rows_and_only_errors_fail_the_run() {
    let p = demo_project();
    append(
        p.path(),
        "schemas/dossier.toml",
        r#"
[[tests]]
name = "only_in_person_or_online"
accepted_values = { column = "channel", values = [1, 2] }

[[tests]]
unique = ["agency_code"]
severity = "warn"

[[tests]]
name = "no_dossier_at_all"
sql = "SELECT dossier_code FROM dossier WHERE channel = 3"
"#,
    );
    // The count of postal dossiers, found independently.
    let postal = ok(run(
        p.path(),
        &[
            "query",
            "SELECT COUNT(*) AS n FROM dossier WHERE channel = 3",
            "--format",
            "csv",
        ],
    ));
    let postal: u64 = postal.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(postal > 0);

    let o = run(p.path(), &["test", "--data", "dossier"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", stderr(&o));
    let fail = out
        .lines()
        .position(|l| l.starts_with("FAIL  dossier: only_in_person_or_online"))
        .unwrap_or_else(|| panic!("{out}"));
    let schema = std::fs::read_to_string(p.path().join("schemas/dossier.toml")).unwrap();
    let line = pos(&schema, "name = \"only_in_person_or_online\"").0 - 1;
    assert!(
        out.lines()
            .nth(fail)
            .unwrap()
            .ends_with(&format!("(schemas/dossier.toml:{line})")),
        "{out}"
    );
    assert!(
        out.lines()
            .nth(fail + 1)
            .unwrap()
            .contains(&format!("{postal} offending row(s)")),
        "{out}"
    );
    // The offending value is shown with its count.
    assert!(out.contains(&format!("| 3       | {postal}")), "{out}");
    assert!(out.contains("FAIL  dossier: no_dossier_at_all"), "{out}");
    assert!(out.contains("WARN  dossier: unique(agency_code)"), "{out}");
    assert!(
        out.contains("… and "),
        "only the first rows are shown: {out}"
    );
    let summary = out.lines().last().unwrap();
    assert!(summary.ends_with(" warned, 2 failed"), "{summary}");

    // A warning alone does not fail the run.
    let o = run(p.path(), &["test", "--data", "unique(agency_code)"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("WARN  dossier: unique(agency_code)"));
}

#[test]
fn a_unit_test_catches_a_wrong_formula_without_a_warehouse() {
    let p = project_copy();
    let out = ok(run(p.path(), &["test", "--unit"]));
    assert!(
        out.contains("PASS  monthly_par dossier_monthly_calendar #1"),
        "{out}"
    );
    assert!(
        !p.path().join("warehouse").exists(),
        "unit tests need no warehouse"
    );

    // On-time should count early and on-time resolutions; this counts only the latter.
    edit(
        p.path(),
        "sql/par/dossier_monthly.sql",
        "ELSE (c.resolved_early + c.resolved_on_time) * 100.0 / c.resolved END AS on_time_rate",
        "ELSE c.resolved_on_time * 100.0 / c.resolved END AS on_time_rate",
    );
    let o = run(p.path(), &["test", "--unit", "dossier_monthly_calendar"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", stderr(&o));
    let test_file =
        std::fs::read_to_string(p.path().join("sql/par/tests/dossier_monthly_calendar.toml"))
            .unwrap();
    let rates = test_file.find("on_time_rate,overdue_rate").unwrap();
    let expect_line = test_file[..rates].rfind("[[expect]]").unwrap();
    let line = test_file[..expect_line].matches('\n').count() + 1;
    let csv_line = pos(&test_file, "71.43,40.00").0;
    assert!(
        out.contains(&format!(
            "FAIL  monthly_par dossier_monthly_calendar #2: dossier_monthly where group_kind = 'province'  (sql/par/tests/dossier_monthly_calendar.toml:{line})"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "sql/par/tests/dossier_monthly_calendar.toml:{csv_line}: expected row not computed"
        )),
        "{out}"
    );
    // 3 on time of 7 resolved.
    assert!(
        out.contains("closest computed row differs in on_time_rate: expected 71.43, computed 42.857142857142854"),
        "{out}"
    );
    // The counts did not change: the first expectation still passes.
    assert!(
        out.contains("PASS  monthly_par dossier_monthly_calendar #1"),
        "{out}"
    );
}

#[test]
fn a_broken_unit_test_is_reported_where_it_is_wrong() {
    let p = project_copy();
    let text = r#"report = "monthly_par"
period = "2026-10"

[inputs.dossiers]
csv = """
dossier_code
X
"""

[[expect]]
table = "dossier_montly"
csv = """
received
1
"""
"#;
    std::fs::write(p.path().join("sql/par/tests/broken.toml"), text).unwrap();
    for args in [vec!["test", "--unit"], vec!["check"]] {
        let o = run(p.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stdout(&o));
        let err = stderr(&o);
        let (l, c) = pos(text, "dossiers]");
        assert!(
            err.contains(&format!(
                "sql/par/tests/broken.toml:{l}:{c}: error: `dossiers` is not a dataset, published table or seed"
            )),
            "{err}"
        );
        assert!(err.contains("did you mean `dossier`?"), "{err}");
        let (l, c) = pos(text, "\"dossier_montly\"");
        assert!(
            err.contains(&format!(
                "sql/par/tests/broken.toml:{l}:{c}: error: report `monthly_par` has no table `dossier_montly`"
            )),
            "{err}"
        );
    }
    // A bad cell in an input is reported at its line of the CSV.
    std::fs::write(
        p.path().join("sql/par/tests/broken.toml"),
        r#"report = "monthly_par"
period = "2026-10"

[inputs.dossier]
csv = """
dossier_code,received_at,status
X1,2026-10-02 08:00:00,9
X2,2026-10-0 08:00:00,9
"""

[[expect]]
table = "dossier_monthly"
csv = """
received
2
"""
"#,
    )
    .unwrap();
    let o = run(p.path(), &["test", "--unit", "broken"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("sql/par/tests/broken.toml:8: input `dossier`: received_at:"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn piped_statements_run_in_order_and_the_first_error_stops() {
    let p = project_copy();
    let bin = env!("CARGO_BIN_EXE_parstat");
    let mut child = Command::new(bin)
        .arg("--project")
        .arg(p.path())
        .args(["query", "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b".period 2026-10\nSELECT $period AS p, 'a;b' AS s;\nSELECT COUNT(*) AS n\nFROM dossier;\nSELECT nope FROM dossier;\nSELECT 3 AS never;\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{}", stderr(&o));
    assert!(out.contains("p,s\n2026-10,a;b\n"), "{out}");
    assert!(out.contains("n\n0\n"), "{out}");
    assert!(!out.contains("never"), "{out}");
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
}

/// Runs `parstat query` on a pseudo-terminal (util-linux `script`), typing `keys`.
fn on_a_terminal(project: &Path, history: &Path, keys: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_parstat");
    let cmd = format!("{bin} --project {} query", project.display());
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("PARSTAT_HISTORY", history)
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Typed a little at a time, as a person would, so each line meets a ready prompt.
    for chunk in keys.split_inclusive('\n') {
        stdin.write_all(chunk.as_bytes()).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn the_interactive_prompt_completes_names_and_keeps_its_history() {
    let p = demo_project();
    let history = p.path().join("history.txt");
    let expected = ok(run(
        p.path(),
        &[
            "query",
            "SELECT COUNT(*) AS n FROM satisfaction_vote",
            "--format",
            "csv",
        ],
    ));
    let n = expected.lines().nth(1).unwrap().to_string();
    // `satisfaction_v<TAB>` completes to the table; the statement spans two lines.
    let out = on_a_terminal(
        p.path(),
        &history,
        "SELECT COUNT(*) AS votes_counted FROM satisfaction_v\t\n;\n.quit\n",
    );
    assert!(out.contains("votes_counted"), "{out}");
    assert!(out.contains(&format!("| {n} ")), "{out}");
    let h = std::fs::read_to_string(&history).unwrap();
    assert!(
        h.contains("SELECT COUNT(*) AS votes_counted FROM satisfaction_vote"),
        "{h}"
    );
    // The next session finds it in its history (Up arrow, Enter).
    let out = on_a_terminal(p.path(), &history, "\x1b[A\n.quit\n");
    assert!(out.contains(&format!("| {n} ")), "{out}");
}

/// The files of the manual's worked example (docs/reports.md): each fenced block after
/// `<!-- file: PATH -->`.
fn readme_files() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(crate::util::repo().join("docs/reports.md")).unwrap();
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line
            .strip_prefix("<!-- file: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap();
        assert!(
            fence.starts_with("```"),
            "{path}: no code block after the marker"
        );
        let mut body = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        out.push((path.to_string(), body));
    }
    out
}

#[test]
fn the_readme_example_adds_a_report_without_rust_and_it_runs_end_to_end() {
    let files = readme_files();
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "sql/online/online_by_field.sql",
            "reports/monthly_online.html",
            "reports/monthly_online.txt",
            "pipelines/monthly_online.toml",
            "sql/online/tests/online_by_field.toml",
        ]
    );
    let p = project_copy();
    for (path, body) in &files {
        let target = p.path().join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, body).unwrap();
    }
    // The manual's steps, in order.
    let out = ok(run(p.path(), &["check"]));
    assert!(out.contains("ok: 8 pipelines"), "{out}");
    let out = ok(run(p.path(), &["test", "--unit", "monthly_online"]));
    assert!(
        out.contains("PASS  monthly_online online_by_field #1: online_by_field"),
        "{out}"
    );
    assert!(out.ends_with("1 passed, 0 warned, 0 failed\n"), "{out}");

    // On the demo province: the report's numbers against the same count done independently.
    demo_data(p.path());
    ok(run(p.path(), &["extract", "dossier"]));
    let preview = p.path().join("preview");
    ok(run(
        p.path(),
        &[
            "report",
            "monthly_online",
            "--period",
            "2021-10",
            "--preview",
            preview.to_str().unwrap(),
        ],
    ));
    let computed = std::fs::read_to_string(preview.join("online_by_field.csv")).unwrap();
    let independent = ok(run(
        p.path(),
        &[
            "query",
            "SELECT field_code, COUNT(*) AS received, \
             SUM(CASE WHEN channel = 2 THEN 1 ELSE 0 END) AS received_online \
             FROM dossier WHERE local_month(received_at) = '2021-10' AND status NOT IN (1, 3) \
             GROUP BY field_code ORDER BY field_code",
            "--format",
            "csv",
        ],
    ));
    let mut from_report: Vec<String> =
        csv::Reader::from_reader(computed.trim_start_matches('\u{feff}').as_bytes())
            .records()
            .map(|r| {
                let r = r.unwrap();
                format!("{},{},{}", &r[0], &r[2], &r[3])
            })
            .collect();
    from_report.sort();
    let expected: Vec<String> = independent.lines().skip(1).map(|l| l.to_string()).collect();
    assert!(!expected.is_empty());
    assert_eq!(from_report, expected);

    // Published and emailed: one message for the one recipient, in the outbox.
    ok(run(
        p.path(),
        &["report", "monthly_online", "--period", "2021-10"],
    ));
    let outbox = p.path().join("outbox");
    let emails: Vec<_> = walk(&outbox)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|x| x == "eml"))
        .collect();
    assert_eq!(emails.len(), 1, "{emails:?}");
    let eml = std::fs::read_to_string(&emails[0]).unwrap();
    assert!(eml.contains("To: van-phong@example.gov.vn"), "{eml}");
    let docs = ok(run(p.path(), &["docs", "-o", "docs"]));
    let html = std::fs::read_to_string(docs.trim()).unwrap();
    assert!(
        html.contains("monthly_online"),
        "the dictionary lists the new report"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
