//! Least privilege: report SQL, checks, tests and `parstat query` can only query; nothing
//! they run reads or writes a file outside the warehouse.

use crate::util::*;

/// A report SQL file that would write `target` if it ran.
fn add_writing_sql(p: &std::path::Path, target: &std::path::Path) {
    std::fs::write(
        p.join("sql/par/evil.sql"),
        format!(
            "COPY (SELECT 'x' AS x) TO '{}' STORED AS CSV\n",
            target.display()
        ),
    )
    .unwrap();
    edit(
        p,
        "pipelines/monthly_par.toml",
        "\"sql/par/late_procedures.sql\",",
        "\"sql/par/late_procedures.sql\",\n    \"sql/par/evil.sql\",",
    );
}

#[test]
fn report_sql_that_writes_a_file_is_refused_by_check_and_never_runs() {
    let p = project_copy();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("outside.csv");
    add_writing_sql(p.path(), &target);
    let o = parstat(p.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("sql/par/evil.sql") && err.contains("only queries (SELECT, WITH, VALUES)"),
        "{err}"
    );
    // The report's unit tests run its SQL in memory: the COPY is refused there too.
    let o = run(p.path(), &["test", "--unit"]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        !target.exists(),
        "the report's SQL wrote {}",
        target.display()
    );
}

#[test]
fn a_check_that_creates_a_table_is_refused() {
    let p = project_copy();
    edit(
        p.path(),
        "pipelines/monthly_par.toml",
        "[[checks]]\nname = \"to_process_identity\"",
        "[[checks]]\nname = \"reads_a_file\"\nmessage = \"x\"\nsql = \"CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/hostname'\"\n\n[[checks]]\nname = \"to_process_identity\"",
    );
    let o = parstat(p.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("check `reads_a_file`") && err.contains("only queries"),
        "{err}"
    );
}

#[test]
fn the_analysts_query_cannot_read_or_write_files() {
    let p = project_copy();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("copied.csv");
    let copy = format!(
        "COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
        target.display()
    );
    for sql in [
        copy.as_str(),
        "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/hostname'",
        "SET datafusion.execution.target_partitions = 1",
    ] {
        let o = run(p.path(), &["query", sql]);
        // A refused statement is a usage error, like any SQL error of `query`.
        assert_eq!(o.status.code(), Some(2), "{sql}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("only queries (SELECT, WITH, VALUES)")
                && stderr(&o).contains("-o FILE"),
            "{sql}: {}",
            stderr(&o)
        );
    }
    assert!(!target.exists());
    // A query still runs, and `-o` writes its result where the analyst asks.
    let out = outside.path().join("result.csv");
    ok(run(
        p.path(),
        &["query", "SELECT 1 AS x", "-o", out.to_str().unwrap()],
    ));
    assert!(std::fs::read_to_string(&out).unwrap().contains('1'));
}

/// Every file below `dir`, read as bytes.

#[test]
fn a_csv_row_with_a_field_too_many_keeps_no_personal_text_in_clear() {
    let p = project_copy();
    std::fs::write(
        p.path().join("schemas/applicant.toml"),
        r#"name = "applicant"
label = "Người nộp"
description = "A test dataset with personal data."
primary_key = ["code"]

[[columns]]
name = "code"
type = "Utf8"
nullable = false
label = "Mã"

[[columns]]
name = "applicant_name"
type = "Utf8"
nullable = true
label = "Họ tên"
personal = "hash"

[[columns]]
name = "applicant_address"
type = "Utf8"
nullable = true
label = "Địa chỉ"
personal = "drop"

[[columns]]
name = "agency_name"
type = "Utf8"
nullable = true
label = "Cơ quan"

[[columns]]
name = "fee_vnd"
type = "Int64"
nullable = true
label = "Phí"
"#,
    )
    .unwrap();
    std::fs::write(
        p.path().join("pipelines/applicant.toml"),
        "kind = \"extract\"\ndataset = \"applicant\"\nconnection = \"exports\"\npath = \"nguoi_nop.csv\"\nformat = \"csv\"\nmode = \"merge\"\nquarantine_max_share = 0.5\n\n[columns]\ncode = \"Ma\"\napplicant_name = \"HoTen\"\napplicant_address = \"DiaChi\"\nagency_name = \"CoQuan\"\nfee_vnd = \"Phi\"\n",
    )
    .unwrap();
    // Row 3's address holds an unquoted comma: every field after it slides one column right,
    // the address's second half into `agency_name`, which is not personal.
    let name = "Nguyễn Thị Hồng Nhung";
    let (street, ward) = ("Số 12 ngõ Trần Phú", "Phường Thạch Quý");
    std::fs::create_dir_all(p.path().join("data")).unwrap();
    std::fs::write(
        p.path().join("data/nguoi_nop.csv"),
        format!(
            "Ma,HoTen,DiaChi,CoQuan,Phi\nA1,Lê Văn An,\"Số 1, Hà Huy Tập\",Sở Tư pháp,1000\nA2,{name},{street}, {ward},Sở Xây dựng,2000\nA3,Trần Bình,Xã Cẩm Bình,Sở Y tế,3000\n"
        ),
    )
    .unwrap();
    let o = run(p.path(), &["extract", "applicant"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("3 read, 2 written, 1 quarantined"),
        "{}",
        stdout(&o)
    );
    let files = files_under(&p.path().join("warehouse"));
    assert!(files.len() > 3);
    let mut quarantined = false;
    for (path, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        for secret in [name, street, ward, "Hà Huy Tập", "Lê Văn An"] {
            assert!(
                !text.contains(secret),
                "{secret:?} in clear in {}",
                path.display()
            );
        }
        quarantined |= text.contains("6 fields where the header has 5");
    }
    assert!(
        quarantined,
        "the misshapen row is in the quarantine with its reason"
    );
    for out in [stdout(&o), stderr(&o)] {
        assert!(!out.contains(name) && !out.contains(ward), "{out}");
    }
    // The files may be compressed: the quarantine read back through a query, too.
    let q = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ctx = crate::extract::warehouse(p.path()).await;
        let b = ctx
            .sql("SELECT position, row_json, reasons FROM quarantine")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string()
    });
    assert!(q.contains("nguoi_nop.csv:3"), "{q}");
    for secret in [name, street, ward, "Sở Xây dựng", "2000"] {
        assert!(
            !q.contains(secret),
            "{secret:?} in clear in the quarantine: {q}"
        );
    }
    assert!(
        q.contains("\"applicant_name\":\""),
        "hashed, not dropped: {q}"
    );
}

#[test]
fn smtp_credentials_never_go_out_in_clear_to_another_host() {
    let p = project_copy();
    edit(
        p.path(),
        "parstat.toml",
        "host = \"127.0.0.1\"",
        "host = \"smtp.example.gov.vn\"",
    );
    let text = std::fs::read_to_string(p.path().join("parstat.toml")).unwrap();
    let o = parstat(p.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let (line, col) = pos(&text, "\"none\"");
    let want = format!("parstat.toml:{line}:{col}: error: `security = \"none\"` would send the SMTP username and password to `smtp.example.gov.vn` in clear");
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    // Without `security`, the default is STARTTLS: accepted.
    edit(p.path(), "parstat.toml", "security = \"none\"", "");
    let o = parstat(p.path(), &["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A relay on this machine may take them without encryption.
    let p = project_copy();
    let o = parstat(p.path(), &["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_never_drops_tables_it_did_not_create() {
    let schema = format!("parstat_foreign_{}", std::process::id());
    let pg = "postgres://postgres@127.0.0.1:5432/test";
    let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A real one-stop-shop schema's table, with a dossier in it.
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; CREATE TABLE {schema}.ho_so (ma_ho_so text); INSERT INTO {schema}.ho_so VALUES ('REAL-1')"
        ))
        .await
        .unwrap();
    let p = project_copy();
    let args = |force: bool| {
        let mut a = vec![
            "demo".to_string(),
            "--data-only".into(),
            "--dossiers".into(),
            "500".into(),
            "--until".into(),
            "2026-10".into(),
            "--postgres".into(),
            pg.into(),
            "--pg-schema".into(),
            schema.clone(),
        ];
        if force {
            a.push("--force".into());
        }
        a
    };
    // The demo runs in a blocking task: its own runtime may not start inside this one.
    let demo = |a: Vec<String>| {
        let dir = p.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
            run(&dir, &a)
        })
    };
    let refused = demo(args(false)).await.unwrap();
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        stderr(&refused).contains(&format!("PostgreSQL schema `{schema}` already holds ho_so"))
            && stderr(&refused).contains("--force"),
        "{}",
        stderr(&refused)
    );
    let kept: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {schema}.ho_so WHERE ma_ho_so = 'REAL-1'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the real table was touched");
    // With --force it is replaced, and marked: the next demo load needs no --force.
    ok(demo(args(true)).await.unwrap());
    ok(demo(args(false)).await.unwrap());
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[test]
fn the_demo_refuses_a_project_that_is_not_a_demo() {
    // Exports the demo did not write.
    let p = project_copy();
    std::fs::create_dir_all(p.path().join("data/motcua")).unwrap();
    std::fs::write(
        p.path().join("data/motcua/hoso_202610.ndjson"),
        "{\"real\":1}\n",
    )
    .unwrap();
    let o = run(p.path(), &["demo", "--data-only", "--dossiers", "500"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("did not write (no manifest.json)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(p.path().join("data/motcua/hoso_202610.ndjson")).unwrap(),
        "{\"real\":1}\n"
    );
    // A project that mails its leaders over SMTP.
    let p = project_copy();
    edit(
        p.path(),
        "parstat.toml",
        "transport = \"outbox\"",
        "transport = \"smtp\"",
    );
    let o = run_with(
        p.path(),
        &["demo", "--dossiers", "500"],
        &[("PARSTAT_SMTP_USER", "u"), ("PARSTAT_SMTP_PASSWORD", "p")],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("this project mails over SMTP"),
        "{}",
        stderr(&o)
    );
    assert!(!p.path().join("data").exists(), "nothing generated");
}

#[test]
fn a_value_mapping_on_personal_data_is_refused() {
    let p = project_copy();
    let path = p.path().join("pipelines/dossier.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[values.applicant_name]\n\"Nguyễn Văn An\" = \"Nguyễn Văn Bình\"\n");
    std::fs::write(&path, &text).unwrap();
    let o = parstat(p.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("`applicant_name` is personal data (`personal = \"hash\"`): it cannot have a value mapping"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("Nguyễn"), "{}", stderr(&o));
}

/// Every path below `dir`, relative, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let files = files_under(dir);
    let mut out: Vec<String> = files
        .iter()
        .map(|(p, _)| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn read_only_commands_create_nothing() {
    let p = project_copy();
    let docs = tempfile::tempdir().unwrap();
    let before = listing(p.path());
    for args in [
        vec!["check"],
        vec!["test"],
        vec!["query", "SELECT count(*) AS n FROM dossier"],
        vec!["runs", "list"],
        vec!["docs", "-o", docs.path().to_str().unwrap()],
    ] {
        let o = run(p.path(), &args);
        assert!(
            matches!(o.status.code(), Some(0) | Some(1)),
            "{args:?}: {}",
            stderr(&o)
        );
        assert_eq!(listing(p.path()), before, "{args:?} wrote into the project");
        assert!(
            !p.path().join("warehouse").exists(),
            "{args:?} created the warehouse folder"
        );
    }
}
