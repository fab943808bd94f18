//! Extraction under faults that need no killing: a source that fails partway, times from the
//! future, rejected rows of several runs, a dataset without an update time, a source that
//! hangs, and the per-pipeline lease.

use datafusion::arrow::array::Array;
use datafusion::prelude::SessionContext;

use crate::extract::{demo, warehouse};
use crate::util::*;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Adds the PostgreSQL connection `motcua`, its URL from `MOTCUA_URL`.
fn add_postgres(project: &std::path::Path) {
    edit(
        project,
        "parstat.toml",
        "[connections.exports]",
        "[connections.motcua]\nkind = \"postgres\"\nurl = \"${MOTCUA_URL}\"\n\n[connections.exports]",
    );
}

/// A project copy with a small dataset `ledger` (a key, an amount, an update time and a
/// watermark) extracted by pipeline `ledger` from PostgreSQL table `SCHEMA.ledger`.
fn ledger_project(schema: &str, extra: &str) -> tempfile::TempDir {
    let p = project_copy();
    std::fs::write(
        p.path().join("schemas/ledger.toml"),
        r#"name = "ledger"
label = "Sổ thử"
description = "A test dataset."
primary_key = ["code"]
watermark = "updated_at"

[[columns]]
name = "code"
type = "Utf8"
nullable = false
label = "Mã"

[[columns]]
name = "amount"
type = "Int64"
nullable = false
label = "Số tiền"

[[columns]]
name = "updated_at"
type = "Timestamp"
nullable = false
label = "Cập nhật"

[[rules]]
name = "amount_not_negative"
check = "amount >= 0"
message = "amount cannot be negative"
"#,
    )
    .unwrap();
    add_postgres(p.path());
    std::fs::write(
        p.path().join("pipelines/ledger.toml"),
        format!(
            "kind = \"extract\"\ndataset = \"ledger\"\nconnection = \"motcua\"\nmode = \"merge\"\nquarantine_max_share = 0.5\n{extra}\nquery = \"SELECT code, amount, updated_at FROM {schema}.ledger WHERE updated_at >= $watermark\"\n"
        ),
    )
    .unwrap();
    p
}

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A fresh PostgreSQL schema for one test, dropped when the guard goes.
struct Schema(String);

impl Schema {
    async fn new(prefix: &str, ddl: &str) -> Schema {
        let name = format!("parstat_{prefix}_{}", std::process::id());
        pg().await
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}; {}",
                ddl.replace("SCHEMA_", &name)
            ))
            .await
            .unwrap();
        Schema(name)
    }

    async fn exec(&self, sql: &str) -> u64 {
        pg().await
            .execute(&sql.replace("SCHEMA_", &self.0), &[])
            .await
            .unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::process::Command::new("psql")
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-c",
            ])
            .arg(format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .output();
    }
}

async fn strings(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    for batch in b {
        let col = datafusion::arrow::compute::cast(
            batch.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let a = col
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        out.extend((0..a.len()).map(|i| a.value(i).to_string()));
    }
    out
}

const LEDGER: &str = "CREATE TABLE SCHEMA_.ledger (code text PRIMARY KEY, amount bigint NOT NULL, updated_at timestamptz NOT NULL)";

#[tokio::test(flavor = "multi_thread")]
async fn a_time_from_the_future_is_quarantined_and_leaves_the_watermark_alone() {
    let s = Schema::new("future", LEDGER).await;
    s.exec("INSERT INTO SCHEMA_.ledger SELECT 'A' || i, i, now() - interval '2 days' + i * interval '1 minute' FROM generate_series(1, 20) i").await;
    // A typo in the source: the year 2206.
    s.exec("INSERT INTO SCHEMA_.ledger VALUES ('TYPO', 5, '2206-03-01 08:00:00+07')")
        .await;
    let p = ledger_project(&s.0, "");
    let env = [("MOTCUA_URL", PG)];
    let out = ok(run_with(p.path(), &["extract", "ledger"], &env));
    assert!(out.contains("21 read, 20 written, 1 quarantined"), "{out}");
    assert!(
        !out.contains("2206"),
        "the watermark is not the typo's: {out}"
    );
    let ctx = warehouse(p.path()).await;
    let reasons = strings(
        &ctx,
        "SELECT reasons FROM quarantine WHERE dataset = 'ledger'",
    )
    .await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("updated_at: 2206-03-01 08:00:00 is in the future")
            && reasons[0].contains("future_tolerance_minutes"),
        "{reasons:?}"
    );
    // A row updated after the first run (but long before 2206) is read by the next one.
    s.exec("INSERT INTO SCHEMA_.ledger VALUES ('LATE', 7, now())")
        .await;
    ok(run_with(p.path(), &["extract", "ledger"], &env));
    let ctx = warehouse(p.path()).await;
    let codes = strings(&ctx, "SELECT code FROM ledger WHERE code = 'LATE'").await;
    assert_eq!(codes, vec!["LATE".to_string()]);
    // A wider tolerance, set in the pipeline, takes the row.
    edit(
        p.path(),
        "pipelines/ledger.toml",
        "quarantine_max_share = 0.5",
        "quarantine_max_share = 0.5\nfuture_tolerance_minutes = 200000000",
    );
    ok(run_with(p.path(), &["extract", "ledger", "--full"], &env));
    let ctx = warehouse(p.path()).await;
    assert_eq!(
        strings(&ctx, "SELECT code FROM ledger WHERE code = 'TYPO'").await,
        vec!["TYPO".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_rows_of_two_runs_never_replace_each_other() {
    let s = Schema::new("quar", LEDGER).await;
    s.exec("INSERT INTO SCHEMA_.ledger SELECT 'A' || i, i, now() - interval '3 days' FROM generate_series(1, 10) i").await;
    // Row 1 of the first run's result is bad.
    s.exec("INSERT INTO SCHEMA_.ledger VALUES ('BAD1', -1, now() - interval '4 days')")
        .await;
    let p = ledger_project(&s.0, "");
    let env = [("MOTCUA_URL", PG)];
    let query = "SELECT code, amount, updated_at FROM SCHEMA_.ledger WHERE updated_at >= $watermark ORDER BY amount";
    edit(
        p.path(),
        "pipelines/ledger.toml",
        &format!(
            "SELECT code, amount, updated_at FROM {}.ledger WHERE updated_at >= $watermark",
            s.0
        ),
        &query.replace("SCHEMA_", &s.0),
    );
    ok(run_with(p.path(), &["extract", "ledger"], &env));
    // The second run reads only what changed: its row 1 is another bad row.
    s.exec("INSERT INTO SCHEMA_.ledger VALUES ('BAD2', -2, now()), ('NEW', 2, now() + interval '1 second')").await;
    ok(run_with(p.path(), &["extract", "ledger"], &env));
    let ctx = warehouse(p.path()).await;
    let rows = strings(
        &ctx,
        "SELECT position || ' ' || row_json FROM quarantine WHERE dataset = 'ledger' ORDER BY row_json",
    )
    .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].starts_with("row 1 ") && rows[0].contains("BAD1"),
        "{rows:?}"
    );
    assert!(
        rows[1].starts_with("row 1 ") && rows[1].contains("BAD2"),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dataset_without_an_update_time_loads_from_a_database() {
    let s = Schema::new(
        "disb",
        "CREATE TABLE SCHEMA_.giai_ngan (ma_du_an text, ky text, von numeric(20,0))",
    )
    .await;
    s.exec("INSERT INTO SCHEMA_.giai_ngan SELECT 'DA' || i, '2026-0' || (1 + i % 9), i * 1000000 FROM generate_series(1, 50) i").await;
    let p = project_copy();
    add_postgres(p.path());
    // Investors' reports as the contract defines them: no update time at all.
    std::fs::write(
        p.path().join("pipelines/investment_disbursement.toml"),
        format!(
            "kind = \"extract\"\ndataset = \"investment_disbursement\"\nconnection = \"motcua\"\nmode = \"merge\"\nquery = \"SELECT ma_du_an AS project_code, ky AS report_month, von AS disbursed_cumulative_vnd FROM {}.giai_ngan\"\n",
            s.0
        ),
    )
    .unwrap();
    let env = [("MOTCUA_URL", PG)];
    let out = ok(run_with(
        p.path(),
        &["extract", "investment_disbursement"],
        &env,
    ));
    assert!(out.contains("50 read, 50 written"), "{out}");
    // A report sent again with a new amount replaces the old one; nothing doubles.
    s.exec("UPDATE SCHEMA_.giai_ngan SET von = von + 1 WHERE ma_du_an = 'DA7'")
        .await;
    ok(run_with(
        p.path(),
        &["extract", "investment_disbursement"],
        &env,
    ));
    let ctx = warehouse(p.path()).await;
    let n = strings(&ctx, "SELECT count(*) FROM investment_disbursement").await;
    assert_eq!(n, vec!["50".to_string()]);
    let v = strings(
        &ctx,
        "SELECT disbursed_cumulative_vnd FROM investment_disbursement WHERE project_code = 'DA7'",
    )
    .await;
    assert_eq!(v, vec!["7000001".to_string()]);
}

/// The disbursement reports split in two files, `gn/a.csv` and `gn/b.csv`, loaded in replace
/// mode.
struct TwoFiles {
    dir: std::path::PathBuf,
    header: String,
    a: Vec<String>,
    b: Vec<String>,
}

impl TwoFiles {
    fn new(project: &std::path::Path) -> Self {
        let text = std::fs::read_to_string(project.join("data/dautu/giai_ngan.csv")).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let header = lines.remove(0);
        let b = lines.split_off(lines.len() / 2);
        let files = TwoFiles {
            dir: project.join("data/gn"),
            header,
            a: lines,
            b,
        };
        std::fs::create_dir_all(&files.dir).unwrap();
        files.write("a.csv", &files.a);
        files.write("b.csv", &files.b);
        let pipeline = "pipelines/investment_disbursement.toml";
        edit(
            project,
            pipeline,
            "path = \"dautu/giai_ngan.csv\"",
            "path = \"gn/*.csv\"",
        );
        edit(project, pipeline, "mode = \"merge\"", "mode = \"replace\"");
        files
    }

    fn write(&self, name: &str, rows: &[String]) {
        let text = format!("{}\n{}\n", self.header, rows.join("\n"));
        std::fs::write(self.dir.join(name), text).unwrap()
    }

    fn total(&self) -> usize {
        self.a.len() + self.b.len()
    }
}

async fn disbursements(project: &std::path::Path) -> Vec<String> {
    strings(
        &warehouse(project).await,
        "SELECT count(*) FROM investment_disbursement",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replace_reads_every_file_and_a_failed_one_replaces_nothing() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "2000"]);
    let files = TwoFiles::new(p.path());
    let total = files.total();
    let count = || disbursements(p.path());
    ok(run(p.path(), &["extract", "investment_disbursement"]));
    assert_eq!(count().await, vec![total.to_string()]);
    let log = p
        .path()
        .join("warehouse/investment_disbursement/_delta_log");
    // Nothing changed: nothing to replace.
    let before = delta_commits(&log);
    ok(run(p.path(), &["extract", "investment_disbursement"]));
    assert_eq!(delta_commits(&log), before);
    // One file changed (its last row gone): the table is every file's rows, the unchanged
    // file's too.
    files.write("b.csv", &files.b[..files.b.len() - 1]);
    ok(run(p.path(), &["extract", "investment_disbursement"]));
    assert_eq!(count().await, vec![(total - 1).to_string()]);
    // A file that cannot be read fails the run, and the table is left as it was.
    let before = delta_commits(&log);
    files.write("b.csv", &files.b);
    std::fs::write(files.dir.join("c.csv"), "Khac,Cot\n1,2\n").unwrap();
    let o = run(p.path(), &["extract", "investment_disbursement"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("c.csv"), "{}", stderr(&o));
    assert_eq!(delta_commits(&log), before, "a failed replace committed");
    assert_eq!(count().await, vec![(total - 1).to_string()]);
    std::fs::remove_file(files.dir.join("c.csv")).unwrap();
    ok(run(p.path(), &["extract", "investment_disbursement"]));
    assert_eq!(count().await, vec![total.to_string()]);
}

/// A replace read in many chunks still writes once, at the end, and marks every file it read,
/// not only the last chunk's: a rerun with nothing changed then reads and commits nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_replace_in_many_chunks_commits_once_and_remembers_every_file() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "2000"]);
    let files = TwoFiles::new(p.path());
    let total = files.total();
    assert!(total > 200, "{total} rows are too few for chunks of 50");
    let small = ["extract", "investment_disbursement", "--chunk-rows", "50"];
    let log = p
        .path()
        .join("warehouse/investment_disbursement/_delta_log");
    ok(run(p.path(), &small));
    assert_eq!(disbursements(p.path()).await, vec![total.to_string()]);
    let before = delta_commits(&log);
    ok(run(p.path(), &small));
    assert_eq!(
        delta_commits(&log),
        before,
        "a rerun with nothing changed committed"
    );
    // One file changed: one commit holds the whole new table.
    files.write("a.csv", &files.a[1..]);
    ok(run(p.path(), &small));
    assert_eq!(delta_commits(&log), before + 1);
    assert_eq!(disbursements(p.path()).await, vec![(total - 1).to_string()]);
    ok(run(p.path(), &small));
    assert_eq!(
        delta_commits(&log),
        before + 1,
        "a rerun with nothing changed committed"
    );
}

#[test]
fn a_broken_workbook_fails_the_run_and_replaces_nothing() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "2000"]);
    ok(run(p.path(), &["extract", "rating"]));
    let log = p.path().join("warehouse/rating/_delta_log");
    let before = delta_commits(&log);
    // A new workbook the run reads first (so it has rows to replace with), then one that
    // cannot be read at all.
    let dir = p.path().join("data/xephang");
    std::fs::copy(dir.join("ket_qua_cchc.xlsx"), dir.join("0000_copy.xlsx")).unwrap();
    std::fs::write(dir.join("zzzz_broken.xlsx"), b"PK\x03\x04 not a workbook").unwrap();
    let o = run(p.path(), &["extract", "rating"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("zzzz_broken.xlsx"), "{}", stderr(&o));
    assert_eq!(delta_commits(&log), before, "a failed replace committed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_hangs_fails_the_run_within_its_timeout() {
    // A listener that accepts connections and never answers, like a stalled server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for c in listener.incoming().take(2) {
            open.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(8));
    });
    let p = ledger_project("nowhere", "");
    edit(
        p.path(),
        "parstat.toml",
        "url = \"${MOTCUA_URL}\"",
        "url = \"${MOTCUA_URL}\"\nconnect_timeout_secs = 2",
    );
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let started = std::time::Instant::now();
    let o = run_with(p.path(), &["extract", "ledger"], &[("MOTCUA_URL", &url)]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no answer within 2 s (`connect_timeout_secs` of connection `motcua`)"),
        "{}",
        stderr(&o)
    );
    assert!(took.as_secs() < 8, "took {took:?}");
    drop(held);
}

#[test]
fn a_second_run_of_a_pipeline_is_refused_while_the_first_holds_its_lease() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "20000"]);
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(p.path())
        .args(["-q", "extract", "dossier", "--chunk-rows", "1000"])
        .env("PARSTAT_PII_KEY", KEY)
        .spawn()
        .unwrap();
    // Once the first has committed, it holds the lease.
    let log = p.path().join("warehouse/dossier/_delta_log");
    let started = std::time::Instant::now();
    while delta_commits(&log) < 1 && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let second = run(p.path(), &["extract", "dossier"]);
    let first_ok = first.wait().unwrap().success();
    assert!(first_ok);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    let err = stderr(&second);
    assert!(
        err.contains("pipeline `dossier` is being run by parstat run ")
            && err.contains(&format!("process {}", first.id())),
        "{err}"
    );
    // Once the first is done, the lease is free again.
    let out = ok(run(p.path(), &["extract", "dossier"]));
    assert!(out.contains(" 0 written"), "{out}");
}

#[test]
fn a_run_whose_lease_was_taken_commits_nothing_more() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "20000"]);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(p.path())
        .args(["-q", "extract", "dossier", "--chunk-rows", "500"])
        .env("PARSTAT_PII_KEY", KEY)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = p.path().join("warehouse/dossier/_delta_log");
    let started = std::time::Instant::now();
    while delta_commits(&log) < 2 && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Another holder takes the next epoch, as one would after this run's heartbeats stopped
    // (a paused process): from the next commit on, this run must stop.
    let lease = p.path().join("warehouse/_lease/pipeline-dossier");
    let taken = format!(
        "{{\"holder\":\"parstat run other\",\"at\":\"{}\",\"released\":false}}",
        chrono::Utc::now().to_rfc3339()
    );
    std::fs::write(lease.join("epoch-000000000001.json"), taken).unwrap();
    let at_steal = delta_commits(&log);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another process took this run's lease"),
        "{err}"
    );
    // At most the commit already under way when the lease was taken lands.
    assert!(
        delta_commits(&log) <= at_steal + 1,
        "{} commits after the lease was taken at {at_steal}",
        delta_commits(&log) - at_steal
    );
}
