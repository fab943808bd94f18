//! `parstat check`: passes on the demo project, and on broken copies of it fails with exit
//! code 2 and every problem at its exact `file:line:column`.

use crate::util::*;

/// Runs check and returns stderr, asserting the exit code.
fn check(project: &std::path::Path, code: i32) -> String {
    let out = parstat(project, &["check"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stderr:\n{err}\nstdout:\n{}",
        stdout(&out)
    );
    err
}

fn expect(err: &str, file: &str, at: (usize, usize), message: &str) {
    let want = format!("{file}:{}:{}: error: {message}", at.0, at.1);
    assert!(
        err.lines().any(|l| l.starts_with(&want)),
        "expected a line starting with\n  {want}\nin:\n{err}"
    );
}

#[test]
fn passes_on_the_demo_project() {
    let p = project_copy();
    let out = parstat(p.path(), &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ok: 7 pipelines, 5 datasets checked"),
        "{}",
        stdout(&out)
    );
    // Without generated data the file globs match nothing: a warning, not an error.
    assert!(stderr(&out).contains("warning: no file matches `motcua/hoso_*.ndjson`"));
}

#[test]
fn unknown_keys_are_all_reported_with_a_suggestion() {
    let p = project_copy();
    edit(
        p.path(),
        "pipelines/dossier.toml",
        "schedule = ",
        "shedule = ",
    );
    let text = edit(
        p.path(),
        "pipelines/dossier.toml",
        "overlap_minutes = 60",
        "overlap_minutes = 60\nquarantine_max = 0.1",
    );
    let settings = edit(
        p.path(),
        "parstat.toml",
        "security = \"none\"",
        "securty = \"none\"",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "pipelines/dossier.toml",
        pos(&text, "shedule"),
        "unknown key `shedule` at the top level",
    );
    expect(
        &err,
        "pipelines/dossier.toml",
        pos(&text, "quarantine_max ="),
        "unknown key `quarantine_max` at the top level",
    );
    expect(
        &err,
        "parstat.toml",
        pos(&settings, "securty"),
        "unknown key `securty` in `mail.smtp`",
    );
    assert!(err.contains("help: did you mean `schedule`?"), "{err}");
    assert!(err.contains("help: did you mean `security`?"), "{err}");
    assert!(
        err.contains("help: did you mean `quarantine_max_share`?"),
        "{err}"
    );
}

#[test]
fn unknown_connection_and_dataset_names() {
    let p = project_copy();
    let a = edit(
        p.path(),
        "pipelines/rating.toml",
        "connection = \"exports\"",
        "connection = \"exprts\"",
    );
    let b = edit(
        p.path(),
        "pipelines/satisfaction_vote.toml",
        "dataset = \"satisfaction_vote\"",
        "dataset = \"satisfaction_votes\"",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "pipelines/rating.toml",
        pos(&a, "\"exprts\""),
        "unknown connection `exprts`",
    );
    expect(
        &err,
        "pipelines/satisfaction_vote.toml",
        pos(&b, "\"satisfaction_votes\""),
        "unknown dataset `satisfaction_votes`",
    );
    assert!(err.contains("did you mean `exports`?"), "{err}");
    assert!(err.contains("did you mean `satisfaction_vote`?"), "{err}");
}

#[test]
fn invalid_cron_expressions() {
    let p = project_copy();
    let a = edit(
        p.path(),
        "pipelines/investment_event.toml",
        "schedule = \"0 0 2 * * *\"",
        "schedule = \"0 0 25 * * *\"",
    );
    let b = edit(
        p.path(),
        "pipelines/investment_disbursement.toml",
        "schedule = \"0 10 2 * * *\"",
        "schedule = \"10 2 * * *\"",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "pipelines/investment_event.toml",
        pos(&a, "\"0 0 25"),
        "invalid cron expression `0 0 25 * * *`",
    );
    expect(
        &err,
        "pipelines/investment_disbursement.toml",
        pos(&b, "\"10 2"),
        "invalid cron expression `10 2 * * *`",
    );
    assert!(err.contains("help: six fields"), "{err}");
}

/// Adds a report job with its SQL file and template to a project copy.
fn add_report(p: &std::path::Path, needs: &str, sql: &[&str]) -> String {
    std::fs::create_dir_all(p.join("sql/par")).unwrap();
    std::fs::create_dir_all(p.join("reports")).unwrap();
    std::fs::write(p.join("sql/par/dossier_monthly.sql"), "SELECT 1 AS x\n").unwrap();
    std::fs::write(p.join("reports/monthly_par.html"), "<p>{{ title }}</p>\n").unwrap();
    let list = sql
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "kind = \"report\"\ntitle = \"Báo cáo tháng {{{{ period.month }}}}/{{{{ period.year }}}}\"\nsql = [{list}]\ntemplate = \"reports/monthly_par.html\"\nperiod = \"previous_month\"\nperiod_rule = \"decree09\"\nschedule = \"0 0 7 3 * *\"\nneeds = {needs}\nto = [\"chu-tich@example.gov.vn\"]\n"
    );
    std::fs::write(p.join("pipelines/monthly_par.toml"), &text).unwrap();
    text
}

#[test]
fn a_valid_report_job_passes() {
    let p = project_copy();
    // The demo's unit tests expect the tables of the full report, which this one leaves out.
    std::fs::remove_dir_all(p.path().join("sql/par/tests")).unwrap();
    add_report(
        p.path(),
        "[\"dossier\", \"satisfaction_vote\", \"rating\"]",
        &["sql/par/dossier_monthly.sql"],
    );
    let out = parstat(p.path(), &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ok: 7 pipelines"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_job_that_needs_a_dataset_nothing_produces() {
    let p = project_copy();
    std::fs::remove_file(p.path().join("pipelines/rating.toml")).unwrap();
    let text = add_report(
        p.path(),
        "[\"dossier\", \"rating\", \"ratings\"]",
        &["sql/par/dossier_monthly.sql"],
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "pipelines/monthly_par.toml",
        pos(&text, "\"rating\""),
        "this job needs dataset `rating`, which no extract pipeline produces",
    );
    expect(
        &err,
        "pipelines/monthly_par.toml",
        pos(&text, "\"ratings\""),
        "unknown dataset `ratings` in `needs`",
    );
    assert!(err.contains("help: add `pipelines/rating.toml`"), "{err}");
}

#[test]
fn missing_files() {
    let p = project_copy();
    let text = add_report(
        p.path(),
        "[\"dossier\"]",
        &["sql/par/dossier_monthly.sql", "sql/par/missing.sql"],
    );
    std::fs::remove_file(p.path().join("reports/monthly_par.html")).unwrap();
    let err = check(p.path(), 2);
    expect(
        &err,
        "pipelines/monthly_par.toml",
        pos(&text, "\"sql/par/missing.sql\""),
        "SQL file `sql/par/missing.sql` not found",
    );
    expect(
        &err,
        "pipelines/monthly_par.toml",
        pos(&text, "\"reports/monthly_par.html\""),
        "template `reports/monthly_par.html` not found",
    );

    let q = project_copy();
    std::fs::remove_file(q.path().join("parstat.toml")).unwrap();
    let err = check(q.path(), 2);
    assert!(err.contains("parstat.toml: error: file not found"), "{err}");
}

#[test]
fn duplicate_names() {
    let p = project_copy();
    // A second extract for the same dataset.
    let original =
        std::fs::read_to_string(p.path().join("pipelines/investment_event.toml")).unwrap();
    std::fs::write(
        p.path().join("pipelines/investment_event_ezone.toml"),
        &original,
    )
    .unwrap();
    // A column defined twice.
    let schema = edit(
        p.path(),
        "schemas/satisfaction_vote.toml",
        "[[columns]]\nname = \"level\"",
        "[[columns]]\nname = \"voted_at\"\ntype = \"Timestamp\"\nnullable = false\nlabel = \"Lần nữa\"\n\n[[columns]]\nname = \"level\"",
    );
    // Two SQL files with one table name.
    let text = add_report(
        p.path(),
        "[\"dossier\"]",
        &[
            "sql/par/dossier_monthly.sql",
            "sql/other/dossier_monthly.sql",
        ],
    );
    std::fs::create_dir_all(p.path().join("sql/other")).unwrap();
    std::fs::write(
        p.path().join("sql/other/dossier_monthly.sql"),
        "SELECT 2 AS y\n",
    )
    .unwrap();
    let err = check(p.path(), 2);
    expect(
        &err,
        "pipelines/investment_event_ezone.toml",
        pos(&original, "\"investment_event\""),
        &format!(
            "dataset `investment_event` is already produced by pipelines/investment_event.toml:{}",
            pos(&original, "\"investment_event\"").0
        ),
    );
    // The second definition's name value, after `name = `.
    let second = schema
        .match_indices("name = \"voted_at\"")
        .nth(1)
        .unwrap()
        .0;
    let dup_line = schema[..second].matches('\n').count() + 1;
    expect(
        &err,
        "schemas/satisfaction_vote.toml",
        (dup_line, 8),
        "duplicate column `voted_at`",
    );
    expect(
        &err,
        "pipelines/monthly_par.toml",
        pos(&text, "\"sql/other/dossier_monthly.sql\""),
        "report table `dossier_monthly` is already defined at pipelines/monthly_par.toml:3",
    );
}

#[test]
fn unset_environment_variables_are_named_where_needed() {
    let p = project_copy();
    // With the outbox transport the SMTP variables are not needed: no error.
    let out = parstat(p.path(), &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // With SMTP they are.
    let settings = edit(
        p.path(),
        "parstat.toml",
        "transport = \"outbox\"",
        "transport = \"smtp\"",
    );
    let err = check(p.path(), 2);
    let user = pos(&settings, "${PARSTAT_SMTP_USER}");
    expect(
        &err,
        "parstat.toml",
        user,
        "environment variable `PARSTAT_SMTP_USER` is not set",
    );
    expect(
        &err,
        "parstat.toml",
        pos(&settings, "${PARSTAT_SMTP_PASSWORD}"),
        "environment variable `PARSTAT_SMTP_PASSWORD` is not set",
    );
    assert!(
        err.contains("help: set it before running parstat: `export PARSTAT_SMTP_USER=...`"),
        "{err}"
    );
    // Set, they pass; and the secret's value never appears in the output.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_parstat"))
        .args(["--project"])
        .arg(p.path())
        .arg("check")
        .env("PARSTAT_SMTP_USER", "ioc")
        .env("PARSTAT_SMTP_PASSWORD", "s3cr3t-Pa55")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("s3cr3t-Pa55") && !stdout(&out).contains("s3cr3t-Pa55"));
}

#[test]
fn an_unset_variable_of_a_used_connection() {
    let p = project_copy();
    let settings = edit(
        p.path(),
        "parstat.toml",
        "[connections.exports]",
        "[connections.motcua]\nkind = \"postgres\"\nurl = \"${MOTCUA_DATABASE_URL}\"\n\n[connections.exports]",
    );
    // Defined but unused: fine.
    check(p.path(), 0);
    std::fs::write(
        p.path().join("pipelines/dossier_db.toml"),
        "kind = \"extract\"\ndataset = \"investment_disbursement\"\nconnection = \"motcua\"\nquery = \"SELECT * FROM giai_ngan WHERE updated_at >= $watermark\"\n",
    )
    .unwrap();
    std::fs::remove_file(p.path().join("pipelines/investment_disbursement.toml")).unwrap();
    let err = check(p.path(), 2);
    expect(
        &err,
        "parstat.toml",
        pos(&settings, "${MOTCUA_DATABASE_URL}"),
        "environment variable `MOTCUA_DATABASE_URL` is not set",
    );
    assert!(
        err.contains("connection `motcua` is used by a pipeline"),
        "{err}"
    );
}

#[test]
fn secrets_written_in_files_are_refused() {
    let p = project_copy();
    let settings = edit(
        p.path(),
        "parstat.toml",
        "password = \"${PARSTAT_SMTP_PASSWORD}\"",
        "password = \"hunter2\"",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "parstat.toml",
        pos(&settings, "\"hunter2\""),
        "the SMTP password is written in the file",
    );
}

#[test]
fn schema_errors_and_syntax_errors_are_positioned() {
    let p = project_copy();
    let schema = edit(
        p.path(),
        "schemas/rating.toml",
        "type = \"Int16\"",
        "type = \"Int61\"",
    );
    let schema2 = edit(
        p.path(),
        "schemas/investment_disbursement.toml",
        "primary_key = [\"project_code\", \"report_month\"]",
        "primary_key = [\"project_code\", \"report_mnth\"]",
    );
    let broken = edit(
        p.path(),
        "pipelines/satisfaction_vote.toml",
        "mode = \"append\"",
        "mode = \"append",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "schemas/rating.toml",
        pos(&schema, "\"Int61\""),
        "unknown type `Int61` for column `year`",
    );
    expect(
        &err,
        "schemas/investment_disbursement.toml",
        pos(&schema2, "\"report_mnth\""),
        "primary key column `report_mnth` is not a column",
    );
    let (line, _) = pos(&broken, "mode = \"append");
    assert!(
        err.lines().any(
            |l| l.starts_with(&format!("pipelines/satisfaction_vote.toml:{line}:"))
                && l.contains("error: invalid TOML")
        ),
        "{err}"
    );
    assert!(err.contains("did you mean `Int16`?"), "{err}");
}

#[test]
fn value_mappings_must_fit_the_schema() {
    let p = project_copy();
    let text = edit(
        p.path(),
        "pipelines/investment_event.toml",
        "THU_HOI = \"revoked\"",
        "THU_HOI = \"revokd\"",
    );
    let text2 = edit(
        p.path(),
        "pipelines/dossier.toml",
        "received_at = \"%Y%m%d%H%M%S\"",
        "received_at = \"%Y%m%d%Q\"",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "pipelines/investment_event.toml",
        pos(&text, "\"revokd\""),
        "`THU_HOI` maps to \"revokd\", which column `event_type` (Utf8) does not accept",
    );
    expect(
        &err,
        "pipelines/dossier.toml",
        pos(&text2, "\"%Y%m%d%Q\""),
        "invalid time format `%Y%m%d%Q`",
    );
}

#[test]
fn report_comparisons_and_checks_are_validated() {
    let p = project_copy();
    let text = edit(
        p.path(),
        "pipelines/monthly_par.toml",
        "dossier_monthly = [\"group_kind\", \"group_code\"]",
        "dossier_monthy = [\"group_kind\", \"group code\"]",
    );
    let text = {
        let t = text.replacen(
            "name = \"resolved_split\"",
            "name = \"to_process_identity\"",
            1,
        );
        std::fs::write(p.path().join("pipelines/monthly_par.toml"), &t).unwrap();
        t
    };
    let err = check(p.path(), 2);
    expect(
        &err,
        "pipelines/monthly_par.toml",
        pos(&text, "[\"group_kind\", \"group code\"]"),
        "`dossier_monthy` is not a table of this report",
    );
    assert!(err.contains("did you mean `dossier_monthly`?"), "{err}");
    let second = text.rfind("\"to_process_identity\"").unwrap();
    let (line, col) = pos(&text[second..], "\"to_process_identity\"");
    let before_lines = text[..second].matches('\n').count();
    let col = if line == 1 {
        text[..second].len() - text[..second].rfind('\n').map(|i| i + 1).unwrap_or(0) + col
    } else {
        col
    };
    expect(
        &err,
        "pipelines/monthly_par.toml",
        (before_lines + line, col),
        "duplicate check `to_process_identity`",
    );
}

#[test]
fn report_sql_is_planned_against_the_schemas() {
    let p = project_copy();
    let late = edit(
        p.path(),
        "sql/par/late_procedures.sql",
        "MAX(procedure_name) AS procedure_name",
        "MAX(procedure_nam) AS procedure_name",
    );
    let late = late.replacen(
        "AND due_at < $period_end AS is_pending_overdue",
        "AND due_at < $period_edn AS is_pending_overdue",
        1,
    );
    std::fs::write(p.path().join("sql/par/late_procedures.sql"), &late).unwrap();
    let sat = edit(
        p.path(),
        "sql/par/satisfaction_monthly.sql",
        "FROM satisfaction_vote v",
        "FROM satisfaction_votes v",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "sql/par/late_procedures.sql",
        pos(&late, "procedure_nam)"),
        "Schema error: No field named procedure_nam",
    );
    expect(
        &err,
        "sql/par/late_procedures.sql",
        pos(&late, "$period_edn"),
        "unknown parameter `$period_edn`",
    );
    assert!(err.contains("did you mean `$period_end`?"), "{err}");
    expect(
        &err,
        "sql/par/satisfaction_monthly.sql",
        pos(&sat, "satisfaction_votes"),
        "table 'datafusion.public.satisfaction_votes' not found",
    );
    assert!(err.contains("did you mean `satisfaction_vote`?"), "{err}");
}

#[test]
fn a_type_error_in_report_sql_is_placed_at_its_expression() {
    let p = project_copy();
    let sql = edit(
        p.path(),
        "sql/investment/new_projects.sql",
        "    e.land_area_ha\n",
        "    e.land_area_ha + e.event_date AS nonsense\n",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "sql/investment/new_projects.sql",
        pos(&sql, "e.land_area_ha + e.event_date"),
        "Cannot coerce arithmetic expression Float64 + Date32 to valid types",
    );
}

#[test]
fn a_sort_column_must_be_stored() {
    let p = project_copy();
    let text = edit(
        p.path(),
        "schemas/dossier.toml",
        "sort_by = [\"finished_at\"]",
        "sort_by = [\"finished\"]",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "schemas/dossier.toml",
        pos(&text, "\"finished\"]"),
        "`sort_by` column `finished` is not a stored column",
    );
    assert!(err.contains("did you mean `finished_at`?"), "{err}");
}

#[test]
fn docs_writes_a_data_dictionary() {
    let p = project_copy();
    let out = parstat(p.path(), &["docs", "-o", "dictionary"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let path = p.path().join("dictionary/index.html");
    assert_eq!(stdout(&out).trim(), path.to_str().unwrap());
    let html = std::fs::read_to_string(path).unwrap();
    for needle in [
        "id=\"ds-dossier\"",
        "Hồ sơ thủ tục hành chính",
        "<code>applicant_name</code>",
        "chỉ lưu mã băm HMAC-SHA256",
        "không bao giờ lưu",
        "id=\"rp-monthly_par\"",
        "<code>on_time_rate</code>",
        "dossier_monthly.sql",
        "chu-tich@example.gov.vn",
        "to_process_identity",
        "id=\"ex-dossier\"",
        // Data tests, with the SQL they run.
        "<code>no_district_level_after_reorganisation</code>",
        "<code>relationships(dossier_code → dossier.dossier_code)</code>",
    ] {
        assert!(html.contains(needle), "{needle} missing");
    }
}

#[test]
fn a_broken_check_is_reported_where_its_sql_is() {
    let p = project_copy();
    let text = edit(
        p.path(),
        "pipelines/monthly_par.toml",
        "FROM dossier_monthly\nWHERE to_process <> resolved + withdrawn + pending",
        "FROM dossier_monthly\nWHERE to_process <> resolvd + withdrawn + pending",
    );
    let err = check(p.path(), 2);
    let at = text.find("resolvd").unwrap();
    let start = text[..at].rfind("sql = ").unwrap() + "sql = ".len();
    let (line, col) = pos(&text, &text[start..start + 12]);
    expect(
        &err,
        "pipelines/monthly_par.toml",
        (line, col),
        "check `to_process_identity`:",
    );
    assert!(err.contains("resolvd"), "{err}");
}

#[test]
fn an_smtp_ca_file_that_is_missing_or_not_a_certificate_is_reported() {
    let p = project_copy();
    let text = edit(
        p.path(),
        "parstat.toml",
        "security = \"none\"",
        "security = \"none\"\nca_file = \"certs/ca.pem\"",
    );
    let err = check(p.path(), 2);
    expect(
        &err,
        "parstat.toml",
        pos(&text, "\"certs/ca.pem\""),
        "`ca_file` ",
    );
    assert!(err.contains("No such file"), "{err}");
    std::fs::create_dir_all(p.path().join("certs")).unwrap();
    std::fs::write(p.path().join("certs/ca.pem"), "not a certificate\n").unwrap();
    let err = check(p.path(), 2);
    assert!(err.contains("holds no PEM certificate"), "{err}");
    std::fs::write(
        p.path().join("certs/ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    check(p.path(), 0);
}
