//! `parstat extract`: files, PostgreSQL and MariaDB into Delta tables, with quarantine,
//! personal data hashed or dropped, loaded files remembered, and crash safety.

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::util::*;

pub(crate) fn demo(project: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["demo", "--data-only", "--until", "2026-10"];
    args.extend_from_slice(extra);
    ok(run(project, &args));
    serde_json::from_str(&std::fs::read_to_string(project.join("data/manifest.json")).unwrap())
        .unwrap()
}

/// A DataFusion context over the warehouse's tables.
pub(crate) async fn warehouse(project: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    for entry in std::fs::read_dir(project.join("warehouse")).unwrap() {
        let p = entry.unwrap().path();
        if p.join("_delta_log").is_dir() {
            let url = url::Url::from_directory_path(p.canonicalize().unwrap()).unwrap();
            let table = deltalake::DeltaTable::try_from_url(url).await.unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            parstat::warehouse::register(&ctx, &table, &name)
                .await
                .unwrap();
        }
    }
    ctx
}

pub(crate) async fn count(ctx: &SessionContext, sql: &str) -> i64 {
    let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let a = b[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap();
    a.value(0)
}

/// The number just before the first `marker` in a summary line (`3000 read, ...`).
pub(crate) fn number_before<T: std::str::FromStr>(out: &str, marker: &str) -> Option<T> {
    out.split(marker).next()?.rsplit(' ').next()?.parse().ok()
}

pub(crate) fn manifest_rows(m: &serde_json::Value, dataset: &str) -> i64 {
    m["datasets"][dataset]["rows"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn files_land_in_delta_tables_once() {
    let p = project_copy();
    let m = demo(p.path(), &["--dossiers", "3000", "--seed", "5"]);
    let out = ok(run(p.path(), &["extract", "--all"]));
    assert_eq!(out.lines().count(), 5, "{out}");
    let ctx = warehouse(p.path()).await;
    for d in [
        "dossier",
        "investment_event",
        "investment_disbursement",
        "rating",
        "satisfaction_vote",
    ] {
        assert_eq!(
            count(&ctx, &format!("SELECT count(*) FROM {d}")).await,
            manifest_rows(&m, d),
            "{d}"
        );
    }
    assert_eq!(
        count(&ctx, "SELECT count(DISTINCT dossier_code) FROM dossier").await,
        3000
    );
    // The contract's facts survive the trip: 1,402 projects and 417,021 billion VND.
    let b = ctx
        .sql(
            "WITH latest AS (SELECT project_code, event_type, registered_capital_vnd, row_number() OVER (PARTITION BY project_code ORDER BY version DESC) AS rn
               FROM investment_event WHERE event_date < DATE '2021-11-01')
             SELECT count(*) AS n, CAST(sum(registered_capital_vnd) AS VARCHAR) AS cap FROM latest WHERE rn = 1 AND event_type NOT IN ('terminated', 'revoked')",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = pretty_format_batches(&b).unwrap().to_string();
    assert!(text.contains("| 1402 | 417021000000000 |"), "{text}");

    // A second run loads nothing again.
    let again = ok(run(p.path(), &["extract", "dossier"]));
    assert!(
        again.contains("0 read, 0 written") && again.contains("0 files loaded"),
        "{again}"
    );
    let ctx = warehouse(p.path()).await;
    assert_eq!(count(&ctx, "SELECT count(*) FROM dossier").await, 3000);
    // A loaded file is known by its stat (size, time, inode) without being read: rewritten
    // with garbage of the same size and its old time put back (only ever done on purpose),
    // it is skipped; had it been read, the garbage would fail the run.
    let file = std::fs::read_dir(p.path().join("data/motcua"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.extension().is_some_and(|x| x == "ndjson"))
        .min()
        .unwrap();
    let original = std::fs::read(&file).unwrap();
    let time = std::fs::metadata(&file).unwrap().modified().unwrap();
    let put = |bytes: &[u8], time: Option<std::time::SystemTime>| {
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        if let Some(t) = time {
            f.set_modified(t).unwrap();
        }
    };
    put(&vec![b'x'; original.len()], Some(time));
    let same_stat = ok(run(p.path(), &["extract", "dossier"]));
    assert!(
        same_stat.contains(": 0 read, 0 written") && same_stat.contains(", 0 files loaded"),
        "{same_stat}"
    );
    // Its content back under a new time: hashed, found unchanged, skipped.
    put(&original, None);
    assert_ne!(std::fs::metadata(&file).unwrap().modified().unwrap(), time);
    let touched = ok(run(p.path(), &["extract", "dossier"]));
    assert!(
        touched.contains(": 0 read, 0 written") && touched.contains(", 0 files loaded"),
        "{touched}"
    );
    // That run marked the file's new stat: garbage under it now is skipped unread too.
    let time = std::fs::metadata(&file).unwrap().modified().unwrap();
    put(&vec![b'x'; original.len()], Some(time));
    let remarked = ok(run(p.path(), &["extract", "dossier"]));
    assert!(remarked.contains(", 0 files loaded"), "{remarked}");
    put(&original, Some(time));
    // --full reloads, and the merge keeps one row per dossier.
    let full = ok(run(p.path(), &["extract", "dossier", "--full"]));
    assert!(full.contains("3000 read"), "{full}");
    let ctx = warehouse(p.path()).await;
    assert_eq!(count(&ctx, "SELECT count(*) FROM dossier").await, 3000);
}

#[tokio::test(flavor = "multi_thread")]
async fn local_midnight_decides_the_partition() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "3000"]);
    ok(run(p.path(), &["extract", "dossier"]));
    let ctx = warehouse(p.path()).await;
    // Received on the 1st between 00:00 and 00:10 local: the previous day (and month) in UTC.
    let edge = "FROM dossier WHERE date_part('day', received_at + INTERVAL '7 hours') = 1 AND date_part('hour', received_at + INTERVAL '7 hours') = 0";
    let n = count(&ctx, &format!("SELECT count(*) {edge}")).await;
    assert!(n > 10, "there are dossiers just after local midnight: {n}");
    let utc_other = count(
        &ctx,
        &format!("SELECT count(*) {edge} AND received_month <> to_char(received_at, '%Y-%m')"),
    )
    .await;
    assert_eq!(utc_other, n, "each is in another month in UTC");
    let local_same = count(&ctx, &format!("SELECT count(*) {edge} AND received_month = to_char(received_at + INTERVAL '7 hours', '%Y-%m')")).await;
    assert_eq!(local_same, n, "each is in its local month's partition");
    // And the partition folder is the local month.
    let b = ctx
        .sql(&format!(
            "SELECT dossier_code, received_month {edge} LIMIT 1"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = pretty_format_batches(&b).unwrap().to_string();
    let month = text
        .lines()
        .nth(3)
        .unwrap()
        .split('|')
        .nth(2)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        p.path()
            .join(format!("warehouse/dossier/received_month={month}"))
            .is_dir(),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rows_go_to_quarantine_with_their_reasons() {
    let p = project_copy();
    let m = demo(p.path(), &["--dossiers", "4000", "--bad-rows", "0.02"]);
    let out = ok(run(p.path(), &["extract", "dossier", "satisfaction_vote"]));
    let bad: i64 = m["datasets"]["dossier"]["bad"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert!(bad > 30, "{bad}");
    let ctx = warehouse(p.path()).await;
    let stored = count(&ctx, "SELECT count(*) FROM dossier").await;
    let quarantined = count(
        &ctx,
        "SELECT count(*) FROM quarantine WHERE dataset = 'dossier'",
    )
    .await;
    assert_eq!(quarantined, bad, "{out}");
    assert_eq!(stored + quarantined, 4000, "totals add up");
    for (kind, needle) in [
        ("broken_encoding", "broken encoding"),
        ("missing_date", "received_at: missing"),
        ("unknown_status", "status:"),
        ("finish_before_receipt", "rule finished_not_before_receipt"),
    ] {
        let n = count(&ctx, &format!("SELECT count(*) FROM quarantine WHERE dataset = 'dossier' AND reasons LIKE '%{needle}%'")).await;
        assert_eq!(
            n,
            m["datasets"]["dossier"]["bad"][kind].as_i64().unwrap(),
            "{kind}"
        );
    }
    let votes_bad: i64 = m["datasets"]["satisfaction_vote"]["bad"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) FROM quarantine WHERE dataset = 'satisfaction_vote'"
        )
        .await,
        votes_bad
    );
}

#[test]
fn too_many_bad_rows_fail_the_run_and_store_nothing_of_it() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "2000", "--bad-rows", "0.3"]);
    let o = run(p.path(), &["extract", "dossier"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("above the 5.0% allowed"),
        "{}",
        stderr(&o)
    );
    assert!(
        !p.path().join("warehouse/dossier/_delta_log").exists(),
        "nothing stored"
    );
}

#[test]
fn refuses_to_run_without_the_hashing_key() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "500"]);
    let o = Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(p.path())
        .args(["extract", "dossier"])
        .env_remove("PARSTAT_PII_KEY")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("PARSTAT_PII_KEY is not set"),
        "{}",
        stderr(&o)
    );
    assert!(
        !p.path().join("warehouse/dossier").exists()
            || !p.path().join("warehouse/dossier/_delta_log").exists()
    );
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out)
        } else {
            out.push(p)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_personal_data_in_clear_anywhere_in_the_warehouse() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "3000", "--bad-rows", "0.02"]);
    // The generated personal data, read from the source files.
    let mut secrets = BTreeSet::new();
    let mut files = Vec::new();
    walk(&p.path().join("data/motcua"), &mut files);
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "ndjson"))
    {
        for line in std::fs::read(f)
            .unwrap()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let r: serde_json::Value =
                serde_json::from_str(&String::from_utf8_lossy(line)).unwrap();
            if r["LoaiDoiTuong"] == 1 {
                for k in ["ChuHoSo", "SoGiayToChuHoSo", "SoDienThoai", "DiaChi"] {
                    secrets.insert(r[k].as_str().unwrap().to_string());
                }
            }
        }
    }
    assert!(secrets.len() > 1000);
    ok(run(p.path(), &["extract", "--all"]));
    // Raw bytes of every file (data, logs, quarantine), uncompressed or not.
    let mut stored = Vec::new();
    walk(&p.path().join("warehouse"), &mut stored);
    let ids: Vec<&String> = secrets
        .iter()
        .filter(|s| s.chars().all(|c| c.is_ascii_digit()) && s.len() >= 9)
        .collect();
    let id_finder = aho_corasick::AhoCorasick::new(&ids).unwrap();
    for f in &stored {
        let bytes = std::fs::read(f).unwrap();
        if let Some(m) = id_finder.find(&bytes) {
            panic!(
                "{} holds {}",
                f.display(),
                String::from_utf8_lossy(&bytes[m.start()..m.end()])
            );
        }
    }
    // And every text value of every table, decompressed by the reader.
    let finder = aho_corasick::AhoCorasick::new(secrets.iter()).unwrap();
    let ctx = warehouse(p.path()).await;
    for t in ["dossier", "satisfaction_vote", "quarantine"] {
        let b = ctx
            .sql(&format!("SELECT * FROM {t}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        if let Some(m) = finder.find(&text) {
            panic!("table {t} holds {}", &text[m.start()..m.end()]);
        }
    }
    let hashed = count(
        &ctx,
        "SELECT count(*) FROM dossier WHERE length(applicant_id) = 64",
    )
    .await;
    assert!(hashed > 2000, "IDs are stored as 64-hex HMACs: {hashed}");
}

/// The one-stop-shop database's view of a dossier, in the dataset's terms.
pub(crate) fn db_query(mysql: bool) -> String {
    let level = "CASE d.cap_don_vi WHEN 'TINH' THEN 'province' WHEN 'HUYEN' THEN 'district' ELSE 'commune' END";
    let paid = "(h.thanh_toan_truc_tuyen IN (1, 2))";
    format!(
        "SELECT h.ma_ho_so AS dossier_code, h.ma_thu_tuc AS procedure_code, t.ten_thu_tuc AS procedure_name,
                t.ma_linh_vuc AS field_code, l.ten_linh_vuc AS field_name, h.ma_don_vi AS agency_code,
                d.ten_don_vi AS agency_name, {level} AS agency_level, d.ma_dia_ban AS area_code,
                t.muc_do AS service_level, h.kenh_thuc_hien AS channel, h.loai_doi_tuong AS applicant_type,
                h.chu_ho_so AS applicant_name, h.so_giay_to AS applicant_id, h.so_dien_thoai AS applicant_phone,
                h.dia_chi AS applicant_address, h.trang_thai AS status, h.ngay_nop AS submitted_at,
                h.ngay_tiep_nhan AS received_at, h.ngay_hen_tra AS due_at, h.ngay_ket_thuc_xu_ly AS finished_at,
                h.ngay_tra AS returned_at, h.so_lan_bo_sung AS supplement_count, h.tong_phi AS fee_vnd,
                {paid} AS paid_online, h.co_thanh_phan_so_hoa AS digitized, h.xac_thuc_vneid AS vneid_verified,
                h.ngay_cap_nhat AS updated_at
         FROM {s}ho_so h JOIN {s}thu_tuc t ON t.ma_thu_tuc = h.ma_thu_tuc JOIN {s}linh_vuc l ON l.ma_linh_vuc = t.ma_linh_vuc
              JOIN {s}don_vi d ON d.ma_don_vi = h.ma_don_vi
         WHERE h.ngay_cap_nhat >= $watermark",
        s = if mysql { "" } else { "SCHEMA_." }
    )
}

pub(crate) async fn dossier_dump(project: &Path) -> String {
    let ctx = warehouse(project).await;
    let b = ctx
        .sql("SELECT * FROM dossier ORDER BY dossier_code")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    pretty_format_batches(&b).unwrap().to_string()
}

/// An incremental run that updates dossiers of many months, with merges limited to one
/// partition's files at a time: every dossier stays once, each update lands, and the run's
/// watermark is in its last commit only.
async fn merges_in_groups_of_partitions(project: &Path, pg: &str, schema: &str) {
    let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let updated = client
        .execute(
            &format!(
                "UPDATE {schema}.ho_so SET so_lan_bo_sung = so_lan_bo_sung + 7, ngay_cap_nhat = '2026-11-02 08:00'
                 WHERE ma_ho_so IN (SELECT ma_ho_so FROM (SELECT ma_ho_so, row_number() OVER (ORDER BY ngay_tiep_nhan, ma_ho_so) AS n
                                                         FROM {schema}.ho_so) x WHERE n % 25 = 0)"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(updated, 100);
    let ctx = warehouse(project).await;
    let before = count(
        &ctx,
        "SELECT CAST(SUM(supplement_count) AS BIGINT) FROM dossier",
    )
    .await;
    let months = count(&ctx, "SELECT COUNT(DISTINCT received_month) FROM dossier").await;
    let log = project.join("warehouse/dossier/_delta_log");
    let known = delta_commits(&log);
    let extract = |bytes: &str| {
        run_with(
            project,
            &["extract", "dossier"],
            &[("MOTCUA_URL", pg), ("PARSTAT_MERGE_SCAN_BYTES", bytes)],
        )
    };
    let o = extract("1");
    let out = ok(o);
    // The 100 updated, and what the overlap before the watermark reads again.
    let read: u64 = number_before(&out, " read, ").unwrap_or_else(|| panic!("no count in {out}"));
    assert!(read >= 100, "{out}");
    let ctx = warehouse(project).await;
    assert_eq!(count(&ctx, "SELECT COUNT(*) FROM dossier").await, 2500);
    assert_eq!(
        count(&ctx, "SELECT COUNT(DISTINCT dossier_code) FROM dossier").await,
        2500
    );
    assert_eq!(
        count(
            &ctx,
            "SELECT CAST(SUM(supplement_count) AS BIGINT) FROM dossier"
        )
        .await,
        before + 700
    );
    let new: Vec<String> = (known..delta_commits(&log))
        .map(|v| std::fs::read_to_string(log.join(format!("{v:020}.json"))).unwrap())
        .collect();
    let merges = new
        .iter()
        .filter(|c| c.contains("\"operation\":\"MERGE\""))
        .count();
    // The 100 dossiers lie in many months: one merge per month holding one, at least 10.
    assert!(
        merges >= 10 && merges as i64 <= months,
        "{merges} merges over {months} months"
    );
    assert_eq!(merges, new.len(), "every new commit is a merge");
    let with_marks: Vec<usize> = (0..new.len())
        .filter(|&i| new[i].contains("\"txn\""))
        .collect();
    assert_eq!(
        with_marks,
        [new.len() - 1],
        "the watermark is in the last commit only"
    );
    let bad = extract("lots");
    // The rerun reads the last day again (the overlap), so it merges and meets the setting.
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("PARSTAT_MERGE_SCAN_BYTES is `lots`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_mariadb_and_files_give_identical_tables() {
    use mysql_async::prelude::Queryable;
    let schema = format!("parstat_x_{}", std::process::id());
    let mut root = mysql_async::Conn::new(
        mysql_async::Opts::from_url("mysql://root@127.0.0.1:3306/test").unwrap(),
    )
    .await
    .unwrap();
    root.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS {schema} CHARACTER SET utf8mb4"
    ))
    .await
    .unwrap();
    let pg = "postgres://postgres@127.0.0.1:5432/test";
    let my = format!("mysql://root@127.0.0.1:3306/{schema}");

    let files = project_copy();
    let s2 = schema.clone();
    let (fp, my2) = (files.path().to_path_buf(), my.clone());
    tokio::task::spawn_blocking(move || {
        demo(
            &fp,
            &[
                "--dossiers",
                "2500",
                "--postgres",
                pg,
                "--pg-schema",
                &s2,
                "--mysql",
                &my2,
            ],
        )
    })
    .await
    .unwrap();
    ok(run(files.path(), &["extract", "dossier"]));
    let from_files = dossier_dump(files.path()).await;

    let mut dumps = Vec::new();
    for (kind, url, mysql) in [
        ("postgres", pg.to_string(), false),
        ("mysql", my.clone(), true),
    ] {
        let p = project_copy();
        std::fs::remove_file(p.path().join("pipelines/dossier.toml")).unwrap();
        edit(p.path(), "parstat.toml", "[connections.exports]", &format!("[connections.motcua]\nkind = \"{kind}\"\nurl = \"${{MOTCUA_URL}}\"\n\n[connections.exports]"));
        let q = db_query(mysql).replace("SCHEMA_", &schema);
        std::fs::write(p.path().join("pipelines/dossier.toml"), format!("kind = \"extract\"\ndataset = \"dossier\"\nconnection = \"motcua\"\nmode = \"merge\"\nquery = \"\"\"\n{q}\n\"\"\"\n")).unwrap();
        let o = run_with(p.path(), &["extract", "dossier"], &[("MOTCUA_URL", &url)]);
        let out = ok(o);
        assert!(out.contains("2500 read, 2500 written"), "{kind}: {out}");
        // Every source counts what it read: 2,500 dossiers are well over a megabyte.
        let mb: f64 =
            number_before(&out, " MB in ").unwrap_or_else(|| panic!("{kind}: no size in {out}"));
        assert!(mb > 0.5, "{kind}: {mb} MB read: {out}");
        dumps.push((kind, dossier_dump(p.path()).await));
        if kind == "postgres" {
            merges_in_groups_of_partitions(p.path(), pg, &schema).await;
        }
    }
    for (kind, d) in &dumps {
        if d != &from_files {
            let first = d.lines().zip(from_files.lines()).find(|(a, b)| a != b);
            panic!("{kind} differs from the files; first differing line:\n{first:?}");
        }
    }
    let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    root.query_drop(format!("DROP DATABASE {schema}"))
        .await
        .unwrap();
}

#[test]
fn a_killed_extract_reruns_to_every_row_exactly_once() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "60000"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(p.path())
        .args(["-q", "extract", "dossier", "--chunk-rows", "2000"])
        .env("PARSTAT_PII_KEY", KEY)
        .spawn()
        .unwrap();
    // Kill it once some files are committed and others are not.
    let log = p.path().join("warehouse/dossier/_delta_log");
    let started = std::time::Instant::now();
    loop {
        let commits = delta_commits(&log);
        if commits >= 5 || started.elapsed().as_secs() > 120 {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(killed, "the extract was still running when killed");
    ok(run(p.path(), &["extract", "dossier"]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = warehouse(p.path()).await;
        assert_eq!(count(&ctx, "SELECT count(*) FROM dossier").await, 60000);
        assert_eq!(
            count(&ctx, "SELECT count(DISTINCT dossier_code) FROM dossier").await,
            60000
        );
    });
}

/// The sync API server of tests/fixtures, stopped when dropped.
pub(crate) struct SyncApi {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for SyncApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts tests/fixtures/sync_api.py over `data`, with the misbehaviours in `opts`.
pub(crate) fn sync_api(data: &Path, token: &str, log: &Path, opts: &[&str]) -> SyncApi {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .arg(repo().join("tests/fixtures/sync_api.py"))
        .arg(data)
        .arg(token)
        .arg(log)
        .args(opts)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the test sync API");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the server prints its port");
    SyncApi { child, port }
}

/// A project whose dossier pipeline reads the sync API `page_size` records a page, with `conn`
/// added to the connection.
pub(crate) fn api_project(page_size: u32, conn: &str) -> tempfile::TempDir {
    let p = project_copy();
    edit(
        p.path(),
        "parstat.toml",
        "[connections.exports]",
        &format!("[connections.motcua_api]\nkind = \"http\"\nurl = \"${{SYNC_URL}}\"\ntoken = \"${{SYNC_TOKEN}}\"\npage_size = {page_size}\n{conn}\n[connections.exports]"),
    );
    let pipeline = std::fs::read_to_string(p.path().join("pipelines/dossier.toml")).unwrap();
    let pipeline = pipeline
        .replace("connection = \"exports\"", "connection = \"motcua_api\"")
        .replace(
            "path = \"motcua/hoso_*.ndjson\"\nformat = \"ndjson\"",
            "endpoint = \"/api/hoso/sync\"\nrecords = \"data\"",
        );
    std::fs::write(p.path().join("pipelines/dossier.toml"), pipeline).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sync_api_gives_the_same_table_as_the_files() {
    let files = project_copy();
    demo(files.path(), &["--dossiers", "2500", "--seed", "9"]);
    ok(run(files.path(), &["extract", "dossier"]));
    let from_files = dossier_dump(files.path()).await;

    let log = files.path().join("503.log");
    let api = sync_api(&files.path().join("data"), "s3cret-token", &log, &[]);
    let p = api_project(400, "");
    let extract = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_parstat"))
            .arg("--project")
            .arg(p.path())
            .args(["extract", "dossier"])
            .env("PARSTAT_PII_KEY", KEY)
            .env("SYNC_URL", format!("http://127.0.0.1:{}", api.port))
            .env("SYNC_TOKEN", token)
            .output()
            .unwrap()
    };
    let denied = extract("wrong");
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stderr(&denied).contains("HTTP 401")
            && stderr(&denied).contains("check the connection's token"),
        "{}",
        stderr(&denied)
    );
    let out = ok(extract("s3cret-token"));
    assert!(out.contains("2500 read, 2500 written"), "{out}");
    assert!(
        std::fs::read_to_string(&log).unwrap().lines().count() >= 1,
        "a 503 was served and retried"
    );
    let from_api = dossier_dump(p.path()).await;
    assert!(
        from_api == from_files,
        "the API's table differs from the files'"
    );
    // The next run asks only for what changed since the watermark (minus the overlap).
    let again = ok(extract("s3cret-token"));
    assert!(!again.contains("2500 read"), "{again}");
    assert_eq!(dossier_dump(p.path()).await, from_files);
}

#[test]
fn dossier_files_are_sorted_by_finish_time_with_the_unfinished_last() {
    use arrow::array::{Array, AsArray};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let p = crate::report::demo_project();
    let mut files = Vec::new();
    for month in std::fs::read_dir(p.path().join("warehouse/dossier")).unwrap() {
        let month = month.unwrap().path();
        if !month.is_dir() || month.ends_with("_delta_log") {
            continue;
        }
        for f in std::fs::read_dir(&month).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    assert!(files.len() > 12, "{files:?}");
    let (mut finished, mut unfinished) = (0, 0);
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut values: Vec<Option<i64>> = Vec::new();
        for b in reader {
            let b = b.unwrap();
            let col = b
                .column(b.schema().index_of("finished_at").unwrap())
                .clone();
            let col = arrow::compute::cast(&col, &arrow::datatypes::DataType::Int64).unwrap();
            let a = col.as_primitive::<arrow::datatypes::Int64Type>();
            values.extend((0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i))));
        }
        finished += values.iter().filter(|v| v.is_some()).count();
        unfinished += values.iter().filter(|v| v.is_none()).count();
        // Ascending, and once a NULL comes, only NULLs.
        for w in values.windows(2) {
            match (w[0], w[1]) {
                (Some(a), Some(b)) => assert!(a <= b, "{}: {a} before {b}", f.display()),
                (None, Some(_)) => panic!(
                    "{}: a finished dossier after an unfinished one",
                    f.display()
                ),
                _ => {}
            }
        }
    }
    assert!(finished > 0 && unfinished > 0, "{finished} {unfinished}");
}

/// Rows added by each commit of a Delta log, in version order (commits without data skipped).
fn rows_per_commit(log: &Path) -> Vec<u64> {
    let mut files: Vec<_> = std::fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|a| a["add"]["stats"].as_str().map(str::to_string))
                .map(|s| {
                    serde_json::from_str::<serde_json::Value>(&s).unwrap()["numRecords"]
                        .as_u64()
                        .unwrap()
                })
                .sum()
        })
        .filter(|n: &u64| *n > 0)
        .collect()
}

/// A first load with the default chunk (150,000 rows) starts writing after about 18,750 rows,
/// not after a whole chunk, and still stores every row once.
#[test]
fn a_first_load_commits_early_and_keeps_every_row_once() {
    let p = project_copy();
    demo(p.path(), &["--dossiers", "60000"]);
    ok(run(p.path(), &["extract", "dossier"]));
    let rows = rows_per_commit(&p.path().join("warehouse/dossier/_delta_log"));
    assert!(rows.len() >= 2, "one commit for 60,000 rows: {rows:?}");
    assert!(rows[0] < 30_000, "the first commit waited: {rows:?}");
    assert!(rows[0] < rows[1], "commits do not grow: {rows:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = warehouse(p.path()).await;
        assert_eq!(count(&ctx, "SELECT count(*) FROM dossier").await, 60000);
        assert_eq!(
            count(&ctx, "SELECT count(DISTINCT dossier_code) FROM dossier").await,
            60000
        );
    });
}
