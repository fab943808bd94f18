//! Fault injection (issue 19): a database that dies partway through a read (the PostgreSQL
//! backend terminated, the MariaDB connection killed; the sync API's server dying is in
//! `http_faults`), `parstat extract` killed with SIGKILL, two extracts of one pipeline at once, and the watermark read
//! across time zones. After each fault a plain rerun (no `--full`) must leave the warehouse
//! equal to its source, row for row: nothing lost, nothing twice.

use chrono::{Datelike, NaiveDateTime, Timelike};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use mysql_async::prelude::Queryable;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::extract::{count, db_query, demo, number_before, warehouse};
use crate::util::*;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY: &str = "mysql://root@127.0.0.1:3306";

/// Rows a database source hands to the writer per message (`SEND_ROWS` in
/// src/extract/mod.rs): a smaller `--chunk-rows` still commits a whole message, so a
/// database extract commits this many rows at a time.
const DB_CHUNK: usize = 10_000;

const DOSSIERS: &str = "SELECT * FROM dossier ORDER BY dossier_code";
const QUARANTINED: &str = "SELECT pipeline, dataset, position, reasons, row_json FROM quarantine ORDER BY pipeline, position, reasons";

/// What `sql` returns over a project's warehouse, as one batch.
async fn rows(project: &Path, sql: &str) -> RecordBatch {
    let ctx = warehouse(project).await;
    let df = ctx.sql(sql).await.unwrap();
    let schema = df.schema().inner().clone();
    let batches = df.collect().await.unwrap();
    datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// Panics with the first differing row unless `got` holds the rows of `want`, in order.
fn same_rows(what: &str, got: &RecordBatch, want: &RecordBatch) {
    if got == want {
        return;
    }
    let n = got.num_rows().min(want.num_rows());
    let at = (0..n)
        .find(|&i| got.slice(i, 1) != want.slice(i, 1))
        .unwrap_or(n);
    let show = |b: &RecordBatch| {
        if at < b.num_rows() {
            pretty_format_batches(&[b.slice(at, 1)])
                .unwrap()
                .to_string()
        } else {
            "(no row)".into()
        }
    };
    panic!(
        "{what}: {} rows where {} were expected; first difference at row {at}:\n{}\nexpected:\n{}",
        got.num_rows(),
        want.num_rows(),
        show(got),
        show(want)
    );
}

/// Dossiers lost (keys of the source missing) and duplicated (rows beyond one per key).
async fn tally(project: &Path, source_rows: i64) -> (i64, i64) {
    let ctx = warehouse(project).await;
    let n = count(&ctx, "SELECT count(*) FROM dossier").await;
    let keys = count(&ctx, "SELECT count(DISTINCT dossier_code) FROM dossier").await;
    (source_rows - keys, n - keys)
}

/// A `parstat extract dossier` running in the background, killed if the test ends first.
struct Running(Option<Child>);

impl Running {
    fn start(project: &Path, env: &[(&str, &str)], chunk: usize) -> Running {
        let child = Command::new(env!("CARGO_BIN_EXE_parstat"))
            .arg("--project")
            .arg(project)
            .args([
                "-q",
                "extract",
                "dossier",
                "--chunk-rows",
                &chunk.to_string(),
            ])
            .env("PARSTAT_PII_KEY", KEY)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start parstat");
        Running(Some(child))
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().expect("running").try_wait().unwrap()
    }

    /// Kills it with SIGKILL; false if it had ended already.
    fn kill(&mut self) -> bool {
        let child = self.0.as_mut().expect("running");
        let alive = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        alive
    }

    /// Waits for its end: the exit status and what it wrote to stderr.
    fn finish(mut self) -> Output {
        self.0.take().expect("running").wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `parstat extract dossier` on a database source, which must succeed; its stdout.
async fn extract(project: &Path, url: &str) -> String {
    let (p, u) = (project.to_path_buf(), url.to_string());
    tokio::task::spawn_blocking(move || {
        let chunk = DB_CHUNK.to_string();
        ok(run_with(
            &p,
            &["extract", "dossier", "--chunk-rows", &chunk],
            &[("MOTCUA_URL", &u)],
        ))
    })
    .await
    .unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Postgres,
    Mariadb,
}

/// A database of the test's own (a PostgreSQL schema or a MariaDB database) with the demo's
/// one-stop-shop tables; dropped, with the connections of the test's extracts, when the test
/// ends, even by a panic.
struct Source {
    kind: Kind,
    name: String,
    /// PostgreSQL settings of parstat's session (`name=value`), besides the test's own.
    settings: Vec<String>,
    pg: Option<tokio_postgres::Client>,
    my: Option<mysql_async::Conn>,
}

impl Source {
    async fn new(kind: Kind, tag: &str) -> Source {
        let name = format!("parstat_fault_{tag}_{}", std::process::id());
        let (mut pg, mut my) = (None, None);
        match kind {
            Kind::Postgres => {
                let (c, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                // The probes of `key_at` read in the order parstat's COPY does: one process,
                // each scan from the table's start.
                c.batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE; SET synchronize_seqscans = off; SET max_parallel_workers_per_gather = 0"
                ))
                .await
                .unwrap();
                pg = Some(c);
            }
            Kind::Mariadb => {
                let mut c = mysql_async::Conn::from_url(format!("{MY}/test"))
                    .await
                    .unwrap();
                c.query_drop(format!("DROP DATABASE IF EXISTS {name}"))
                    .await
                    .unwrap();
                c.query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
                    .await
                    .unwrap();
                c.query_drop(format!("USE {name}")).await.unwrap();
                my = Some(c);
            }
        }
        Source {
            kind,
            name,
            settings: vec![],
            pg,
            my,
        }
    }

    /// Fills it with `dossiers` demo dossiers (the demo's files go to `project`).
    async fn load_demo(&self, project: &Path, dossiers: usize) {
        let mut args = vec!["--dossiers".to_string(), dossiers.to_string()];
        match self.kind {
            Kind::Postgres => args.extend([
                "--postgres".into(),
                PG.into(),
                "--pg-schema".into(),
                self.name.clone(),
            ]),
            Kind::Mariadb => args.extend(["--mysql".into(), self.url()]),
        }
        let p = project.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            demo(&p, &a)
        })
        .await
        .unwrap();
        if self.kind == Kind::Postgres {
            // Where a test stops the source: the row it names sleeps in the COPY.
            self.pg
                .as_ref()
                .unwrap()
                .batch_execute(&format!(
                    "CREATE FUNCTION {}.stall() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(60); RETURN true; END $$",
                    self.name
                ))
                .await
                .unwrap();
        }
    }

    /// parstat's connection URL. PostgreSQL's names the test (`application_name`), so that
    /// only this test's COPY is terminated, and reads in one process from each table's start.
    fn url(&self) -> String {
        match self.kind {
            Kind::Postgres => {
                let mut settings = vec![
                    "synchronize_seqscans=off".to_string(),
                    "max_parallel_workers_per_gather=0".to_string(),
                ];
                settings.extend(self.settings.iter().cloned());
                let options = settings
                    .iter()
                    .map(|s| format!("-c%20{}", s.replace('=', "%3D")))
                    .collect::<Vec<_>>()
                    .join("%20");
                format!("{PG}?application_name={}&options={options}", self.name)
            }
            Kind::Mariadb => format!("{MY}/{}", self.name),
        }
    }

    /// What qualifies a table's name in a statement.
    fn prefix(&self) -> String {
        match self.kind {
            Kind::Postgres => format!("{}.", self.name),
            Kind::Mariadb => String::new(),
        }
    }

    /// The dossier pipeline's query over `table`; the row of key `stall` stops the read for
    /// a minute (`-`: none does).
    fn query(&self, table: &str, stall: &str) -> String {
        let q = db_query(self.kind == Kind::Mariadb)
            .replace("SCHEMA_", &self.name)
            .replace("ho_so h JOIN", &format!("{table} h JOIN"));
        let sleep = match self.kind {
            Kind::Postgres => format!("{}.stall()", self.name),
            Kind::Mariadb => "SLEEP(60) = 0".into(),
        };
        format!("{q}\n           AND (h.ma_ho_so <> '{stall}' OR {sleep})")
    }

    /// A condition true for about `parts` in `of` of the dossiers, the same ones each time.
    fn some(&self, parts: u32, of: u32) -> String {
        match self.kind {
            Kind::Postgres => format!("abs(hashtext(ma_ho_so)) % {of} < {parts}"),
            Kind::Mariadb => format!("CRC32(ma_ho_so) % {of} < {parts}"),
        }
    }

    async fn exec(&mut self, statements: &[String]) {
        for s in statements {
            match self.kind {
                Kind::Postgres => self
                    .pg
                    .as_ref()
                    .unwrap()
                    .batch_execute(s)
                    .await
                    .map_err(|e| e.to_string()),
                Kind::Mariadb => self
                    .my
                    .as_mut()
                    .unwrap()
                    .query_drop(s)
                    .await
                    .map_err(|e| e.to_string()),
            }
            .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    async fn number(&mut self, sql: &str) -> i64 {
        match self.kind {
            Kind::Postgres => self
                .pg
                .as_ref()
                .unwrap()
                .query_one(sql, &[])
                .await
                .unwrap()
                .get(0),
            Kind::Mariadb => self
                .my
                .as_mut()
                .unwrap()
                .query_first(sql)
                .await
                .unwrap()
                .unwrap(),
        }
    }

    /// The first column of `sql`'s rows, as text.
    async fn texts(&mut self, sql: &str) -> Vec<String> {
        match self.kind {
            Kind::Postgres => self
                .pg
                .as_ref()
                .unwrap()
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Kind::Mariadb => self.my.as_mut().unwrap().query(sql).await.unwrap(),
        }
    }

    /// The watermark of the next run (the newest update loaded) minus the pipeline's
    /// 60-minute overlap, in local time.
    async fn since(&mut self) -> NaiveDateTime {
        let sql = match self.kind {
            Kind::Postgres => format!("SELECT to_char(max(ngay_cap_nhat) - interval '60 minutes', 'YYYY-MM-DD HH24:MI:SS.US') FROM {}ho_so", self.prefix()),
            Kind::Mariadb => "SELECT DATE_FORMAT(MAX(ngay_cap_nhat) - INTERVAL 60 MINUTE, '%Y-%m-%d %H:%i:%s.%f') FROM ho_so".into(),
        };
        let t = self.texts(&sql).await.remove(0);
        NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f").unwrap()
    }

    /// The key of the row at 0-based position `at` of the pipeline's result with the
    /// watermark at `since`, in the order the source sends them: the same query, the same plan.
    async fn key_at(&mut self, since: NaiveDateTime, at: usize) -> String {
        let q = self.query("ho_so", "-");
        let keys: Vec<String> = match self.kind {
            Kind::Postgres => {
                let sql = q.replace(
                    "$watermark",
                    &format!("'{}'", since.format("%Y-%m-%d %H:%M:%S%.6f")),
                );
                self.texts(&sql).await
            }
            Kind::Mariadb => {
                // A bound parameter, as parstat's: MariaDB plans with the value it is given.
                let w = mysql_async::Value::Date(
                    since.year() as u16,
                    since.month() as u8,
                    since.day() as u8,
                    since.hour() as u8,
                    since.minute() as u8,
                    since.second() as u8,
                    since.nanosecond() / 1000,
                );
                let rows: Vec<mysql_async::Row> = self
                    .my
                    .as_mut()
                    .unwrap()
                    .exec(q.replace("$watermark", "?"), vec![w])
                    .await
                    .unwrap();
                rows.into_iter()
                    .map(|r| r.get::<String, _>(0).unwrap())
                    .collect()
            }
        };
        assert!(
            keys.len() > at,
            "only {} rows since {since}: a fault at row {at} needs more",
            keys.len()
        );
        keys[at].clone()
    }

    /// The connection of this test's extract while it sleeps on the stall row.
    async fn stalled(&mut self) -> Option<i64> {
        match self.kind {
            Kind::Postgres => self
                .pg
                .as_ref()
                .unwrap()
                .query_opt(
                    "SELECT pid::int8 FROM pg_stat_activity WHERE application_name = $1 AND wait_event = 'PgSleep'",
                    &[&self.name],
                )
                .await
                .unwrap()
                .map(|r| r.get(0)),
            Kind::Mariadb => {
                let sql = format!("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{}' AND STATE = 'User sleep' AND ID <> CONNECTION_ID()", self.name);
                self.my.as_mut().unwrap().query_first(sql).await.unwrap()
            }
        }
    }

    /// Cuts the extract's connection mid-read, as a restart of the database or a network
    /// cut does; how many connections were cut.
    async fn cut(&mut self, id: i64) -> i64 {
        match self.kind {
            // In the select list, so that only the rows the filter keeps are terminated.
            Kind::Postgres => self
                .pg
                .as_ref()
                .unwrap()
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND query ILIKE 'COPY%' AND pid <> pg_backend_pid()",
                    &[&self.name],
                )
                .await
                .unwrap()
                .iter()
                .filter(|r| r.get::<_, bool>(0))
                .count() as i64,
            Kind::Mariadb => {
                self.my
                    .as_mut()
                    .unwrap()
                    .query_drop(format!("KILL {id}"))
                    .await
                    .unwrap();
                1
            }
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let (kind, name) = (self.kind, self.name.clone());
        // Its own runtime on its own thread: a test's runtime cannot be blocked on.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drop_source(kind, &name))
        })
        .join();
    }
}

/// Drops a test's schema or database, after ending the connections of its extracts (a
/// stalled COPY would hold its locks for a minute).
async fn drop_source(kind: Kind, name: &str) {
    match kind {
        Kind::Postgres => {
            if let Ok((c, conn)) = tokio_postgres::connect(PG, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = c
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                        &[&name],
                    )
                    .await;
                let _ = c
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await;
            }
        }
        Kind::Mariadb => {
            if let Ok(mut c) = mysql_async::Conn::from_url(format!("{MY}/test")).await {
                let ids: Vec<u64> = c
                    .query(format!("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{name}' AND ID <> CONNECTION_ID()"))
                    .await
                    .unwrap_or_default();
                for id in ids {
                    let _ = c.query_drop(format!("KILL {id}")).await;
                }
                let _ = c
                    .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
                    .await;
                let _ = c.disconnect().await;
            }
        }
    }
}

/// A copy of the demo project whose `dossier` pipeline reads `src` with `query`.
fn db_project(src: &Source, query: &str) -> tempfile::TempDir {
    let p = project_copy();
    let kind = match src.kind {
        Kind::Postgres => "postgres",
        Kind::Mariadb => "mysql",
    };
    edit(
        p.path(),
        "parstat.toml",
        "[connections.exports]",
        &format!("[connections.motcua]\nkind = \"{kind}\"\nurl = \"${{MOTCUA_URL}}\"\n\n[connections.exports]"),
    );
    set_query(p.path(), query);
    p
}

fn set_query(project: &Path, query: &str) {
    std::fs::write(
        project.join("pipelines/dossier.toml"),
        format!("kind = \"extract\"\ndataset = \"dossier\"\nconnection = \"motcua\"\nmode = \"merge\"\noverlap_minutes = 60\nquery = \"\"\"\n{query}\n\"\"\"\n"),
    )
    .unwrap();
}

/// Starts the extract, waits until it made `commits` commits and its source sleeps on the
/// stall row, then cuts the source's connection. The run must fail (exit 1) and commit no
/// watermark. Returns how many commits the failed run made.
async fn cut_mid_read(src: &mut Source, project: &Path, commits: usize, what: &str) -> usize {
    let log = project.join("warehouse/dossier/_delta_log");
    let before = delta_commits(&log);
    let url = src.url();
    let mut run = Running::start(project, &[("MOTCUA_URL", &url)], DB_CHUNK);
    let started = Instant::now();
    loop {
        if let Some(status) = run.exited() {
            let out = run.finish();
            panic!(
                "{what}: the extract ended ({status}) before its source was cut:\n{}",
                stderr(&out)
            );
        }
        if delta_commits(&log) - before >= commits {
            if let Some(id) = src.stalled().await {
                assert_eq!(
                    src.cut(id).await,
                    1,
                    "{what}: the extract's connection was not found"
                );
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: after 120 s, {} commits of the {commits} awaited, source stalled: {}",
            delta_commits(&log) - before,
            src.stalled().await.is_some()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = tokio::task::spawn_blocking(move || run.finish())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: a run whose source died must fail:\n{}",
        stderr(&out)
    );
    let after = delta_commits(&log);
    let mark = format!("\"{}\"", parstat::extract::watermark_id("dossier"));
    for v in before..after {
        let c = std::fs::read_to_string(log.join(format!("{v:020}.json"))).unwrap();
        assert!(
            !c.contains(&mark),
            "{what}: the failed run committed the watermark (version {v})"
        );
    }
    after - before
}

/// After a plain rerun: the warehouse holds each of the source's dossiers once, and the same
/// rows as a run that never failed (a fresh project reading the same source).
async fn equals_source(src: &mut Source, project: &Path, what: &str) {
    let source_rows = src
        .number(&format!("SELECT count(*) FROM {}ho_so", src.prefix()))
        .await;
    let (lost, duplicates) = tally(project, source_rows).await;
    assert_eq!(
        (lost, duplicates),
        (0, 0),
        "{what}: {lost} dossiers lost, {duplicates} duplicates"
    );
    let fresh = db_project(src, &src.query("ho_so", "-"));
    extract(fresh.path(), &src.url()).await;
    let want = rows(fresh.path(), DOSSIERS).await;
    assert_eq!(want.num_rows() as i64, source_rows, "{what}: a clean read");
    same_rows(what, &rows(project, DOSSIERS).await, &want);
}

/// The source dies at several points of a first load, then of an incremental load whose rows
/// are out of time order; after each series a plain rerun gives the source's rows.
/// `first` and `later`: (row at which the source stops, commits awaited before it is cut).
async fn source_dies_mid_read(
    kind: Kind,
    dossiers: usize,
    first: &[(usize, usize)],
    later: &[(usize, usize)],
) {
    let started = Instant::now();
    let mut src = Source::new(kind, &format!("{kind:?}").to_lowercase()).await;
    let scratch = project_copy();
    src.load_demo(scratch.path(), dossiers).await;
    let s = src.prefix();
    // A tenth of the dossiers kept back, to arrive new before the incremental load.
    let tenth = src.some(1, 10);
    src.exec(&[
        format!("CREATE TABLE {s}held AS SELECT * FROM {s}ho_so WHERE {tenth}"),
        format!("DELETE FROM {s}ho_so WHERE {tenth}"),
    ])
    .await;
    let p = db_project(&src, &src.query("ho_so", "-"));
    let mut faults = 0;
    let mut report = Vec::new();
    let everything = chrono::NaiveDate::from_ymd_opt(1900, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    for &(at, commits) in first {
        let key = src.key_at(everything, at).await;
        set_query(p.path(), &src.query("ho_so", &key));
        let what = format!("{kind:?}, first load cut at row {at}");
        let made = cut_mid_read(&mut src, p.path(), commits, &what).await;
        faults += 1;
        report.push(format!("first load cut at row {at}, {made} commits made"));
    }
    set_query(p.path(), &src.query("ho_so", "-"));
    extract(p.path(), &src.url()).await;
    equals_source(
        &mut src,
        p.path(),
        &format!("{kind:?}: the first load's rerun"),
    )
    .await;

    // Two dossiers in five updated at random times of November (so that the table's order is
    // not their time order) and the tenth kept back inserted.
    let since = src.since().await;
    let two_in_five = src.some(2, 5);
    let changes = match kind {
        Kind::Postgres => vec![
            "SELECT setseed(0.19)".to_string(),
            format!("UPDATE {s}ho_so SET ngay_cap_nhat = timestamp '2026-11-01' + random() * interval '25 days', so_lan_bo_sung = so_lan_bo_sung + 1 WHERE {two_in_five}"),
            format!("UPDATE {s}held SET ngay_cap_nhat = timestamp '2026-11-01' + random() * interval '25 days'"),
        ],
        Kind::Mariadb => vec![
            format!("UPDATE ho_so SET ngay_cap_nhat = TIMESTAMP '2026-11-01 00:00:00' + INTERVAL FLOOR(RAND(19) * 2160000) SECOND, so_lan_bo_sung = so_lan_bo_sung + 1 WHERE {two_in_five}"),
            "UPDATE held SET ngay_cap_nhat = TIMESTAMP '2026-11-01 00:00:00' + INTERVAL FLOOR(RAND(23) * 2160000) SECOND".into(),
        ],
    };
    src.exec(&changes).await;
    src.exec(&[format!("INSERT INTO {s}ho_so SELECT * FROM {s}held")])
        .await;
    for &(at, commits) in later {
        let key = src.key_at(since, at).await;
        set_query(p.path(), &src.query("ho_so", &key));
        let what = format!("{kind:?}, incremental load cut at row {at}");
        let made = cut_mid_read(&mut src, p.path(), commits, &what).await;
        faults += 1;
        report.push(format!(
            "incremental load cut at row {at}, {made} commits made"
        ));
    }
    set_query(p.path(), &src.query("ho_so", "-"));
    let out = extract(p.path(), &src.url()).await;
    let read: u64 = number_before(&out, " read, ").unwrap_or_else(|| panic!("{out}"));
    equals_source(
        &mut src,
        p.path(),
        &format!("{kind:?}: the incremental load's rerun"),
    )
    .await;
    println!(
        "{kind:?}: {faults} faults injected ({}); the reruns left 0 rows lost, 0 duplicates; the incremental rerun read {read} rows; {:.1} s",
        report.join(", "),
        started.elapsed().as_secs_f64()
    );
}

/// Issue 19: the PostgreSQL backend terminated mid-COPY, three times in a first load of
/// 63,000 dossiers and twice in an incremental load.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_backend_terminated_mid_copy_loses_nothing() {
    source_dies_mid_read(
        Kind::Postgres,
        70_000,
        &[(15_000, 1), (35_000, 3), (62_000, 6)],
        &[(12_000, 1), (28_000, 2)],
    )
    .await;
}

/// Issue 19: the MariaDB connection killed mid-read, twice in a first load of 36,000 dossiers
/// and once in an incremental load.
#[tokio::test(flavor = "multi_thread")]
async fn mariadb_connection_killed_mid_read_loses_nothing() {
    source_dies_mid_read(
        Kind::Mariadb,
        40_000,
        &[(12_000, 1), (34_000, 3)],
        &[(15_000, 1)],
    )
    .await;
}

/// Issue 19: `parstat extract` killed with SIGKILL at 20 points of a first load from files
/// (after 1 to N-2 of its N commits, then 0, 20 or 60 ms more, so that the kill falls anywhere
/// in a commit), each followed by a plain rerun: the dossiers and the quarantine equal those of
/// a run that was never interrupted.
#[test]
fn killed_at_twenty_points_a_rerun_equals_an_uninterrupted_run() {
    let started = Instant::now();
    let p = project_copy();
    let dossiers = 10_000;
    demo(
        p.path(),
        &["--dossiers", &dossiers.to_string(), "--bad-rows", "0.02"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Small commits, for many points to kill at; 94 monthly files share them.
    let chunk = 1000;
    ok(run(
        p.path(),
        &["extract", "dossier", "--chunk-rows", &chunk.to_string()],
    ));
    let log = p.path().join("warehouse/dossier/_delta_log");
    let commits = delta_commits(&log);
    let (want, want_q) = rt.block_on(async {
        (
            rows(p.path(), DOSSIERS).await,
            rows(p.path(), QUARANTINED).await,
        )
    });
    assert!(want_q.num_rows() > 100, "the demo's files hold bad rows");
    assert_eq!(want.num_rows() + want_q.num_rows(), dossiers);
    let stored = want.num_rows() as i64;
    assert!(commits >= 9, "{commits} commits: too few points to kill at");
    let wh = p.path().join("warehouse");
    let mut partial = Vec::new();
    for i in 0..20 {
        let at = 1 + i % (commits - 2);
        let delay = [0, 20, 60][i / (commits - 2)];
        std::fs::remove_dir_all(&wh).unwrap();
        let mut killed = Running::start(p.path(), &[], chunk);
        let t = Instant::now();
        while delta_commits(&log) < at {
            assert!(
                killed.exited().is_none(),
                "point {i}: the extract ended before {at} commits"
            );
            assert!(t.elapsed() < Duration::from_secs(60), "point {i}: stuck");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay));
        assert!(
            killed.kill(),
            "point {i}: the extract had ended before the kill"
        );
        killed.finish();
        partial.push(delta_commits(&log));
        ok(run(p.path(), &["extract", "dossier"]));
        rt.block_on(async {
            let (lost, duplicates) = tally(p.path(), stored).await;
            assert_eq!((lost, duplicates), (0, 0), "point {i}: lost, duplicates");
            same_rows(
                &format!("point {i}: dossiers"),
                &rows(p.path(), DOSSIERS).await,
                &want,
            );
            same_rows(
                &format!("point {i}: quarantine"),
                &rows(p.path(), QUARANTINED).await,
                &want_q,
            );
        });
    }
    println!(
        "SIGKILL: 20 faults injected (the killed runs had made {partial:?} of {commits} commits); 0 rows lost, 0 duplicates, {} quarantined rows as uninterrupted; {:.1} s",
        want_q.num_rows(),
        started.elapsed().as_secs_f64()
    );
}

/// Both started at once, on the same project; their outputs.
async fn race(project: &Path, env: &[(&str, &str)]) -> Vec<Output> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (b, p, env) = (barrier.clone(), project.to_path_buf(), env.clone());
            std::thread::spawn(move || {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                b.wait();
                run_with(&p, &["extract", "dossier"], &env)
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || runs.into_iter().map(|r| r.join().unwrap()).collect())
        .await
        .unwrap()
}

/// Issue 19: two `parstat extract dossier` started together on new data, from files and from
/// PostgreSQL: each succeeds or refuses to run beside the other; every dossier is stored once;
/// a plain rerun succeeds and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn two_extracts_started_together_store_every_dossier_once() {
    let started = Instant::now();
    let src = Source::new(Kind::Postgres, "race").await;
    let files = project_copy();
    src.load_demo(files.path(), 20_000).await;
    let from_db = db_project(&src, &src.query("ho_so", "-"));
    // A run alone: what both must hold (the files and the database give the same table, see
    // extract::postgres_mariadb_and_files_give_identical_tables).
    let alone = db_project(&src, &src.query("ho_so", "-"));
    extract(alone.path(), &src.url()).await;
    let want = rows(alone.path(), DOSSIERS).await;
    assert_eq!(want.num_rows(), 20_000);
    let url = src.url();
    let mut refused = 0;
    for (what, p, env) in [
        ("files", files.path(), vec![]),
        (
            "PostgreSQL",
            from_db.path(),
            vec![("MOTCUA_URL", url.as_str())],
        ),
    ] {
        let outs = race(p, &env).await;
        let mut succeeded = 0;
        for o in &outs {
            match o.status.code() {
                Some(0) => succeeded += 1,
                Some(1) if stderr(o).contains("is being run by") => refused += 1,
                c => panic!(
                    "{what}: exit {c:?}, neither a success nor a refusal naming the run holding the pipeline:\n{}",
                    stderr(o)
                ),
            }
        }
        assert!(succeeded >= 1, "{what}: neither run succeeded");
        let (lost, duplicates) = tally(p, 20_000).await;
        assert_eq!((lost, duplicates), (0, 0), "{what}: lost, duplicates");
        same_rows(what, &rows(p, DOSSIERS).await, &want);
        let log = p.join("warehouse/dossier/_delta_log");
        let version = delta_commits(&log);
        let again = ok(run_with(p, &["extract", "dossier"], &env));
        same_rows(&format!("{what}, rerun"), &rows(p, DOSSIERS).await, &want);
        if what == "files" {
            assert!(again.contains(": 0 read, 0 written"), "{again}");
            assert_eq!(delta_commits(&log), version, "the rerun committed");
        }
    }
    println!(
        "race: 2 pairs of extracts started together, {refused} refused; 0 rows lost, 0 duplicates; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Issue 19: the watermark is an instant. The same dossiers with their update time as a
/// local `timestamp`/`DATETIME` and as a `timestamptz`/`TIMESTAMP`, read by a session in
/// another time zone (PostgreSQL: America/New_York; MariaDB: the server's default, UTC here):
/// both give the same instants, and the second run reads exactly the rows updated since the
/// watermark minus the overlap: updates of an hour ago, new rows, and a late row stamped 20
/// minutes before the watermark; none of the rows stamped 2, 6 and 12 hours before it.
async fn watermark_is_an_instant(kind: Kind) {
    let started = Instant::now();
    let mut src = Source::new(kind, &format!("tz_{kind:?}").to_lowercase()).await;
    if kind == Kind::Postgres {
        src.settings.push("TimeZone=America/New_York".into());
    }
    let scratch = project_copy();
    src.load_demo(scratch.path(), 300).await;
    let s = src.prefix();
    let zoned = match kind {
        Kind::Postgres => "ho_so_tz",
        Kind::Mariadb => "ho_so_ts",
    };
    // The zoned copy of the table, rebuilt from the local one after each change.
    let derive = match kind {
        Kind::Postgres => vec![format!(
            "DROP TABLE IF EXISTS {s}{zoned}; CREATE TABLE {s}{zoned} AS SELECT * FROM {s}ho_so;
             ALTER TABLE {s}{zoned} ALTER ngay_cap_nhat TYPE timestamptz USING ngay_cap_nhat AT TIME ZONE 'Asia/Ho_Chi_Minh'"
        )],
        Kind::Mariadb => vec![
            format!("DROP TABLE IF EXISTS {zoned}"),
            format!("CREATE TABLE {zoned} LIKE ho_so"),
            format!("ALTER TABLE {zoned} MODIFY ngay_cap_nhat TIMESTAMP NULL DEFAULT NULL"),
            // Local times stored as the instants they are.
            "SET time_zone = '+07:00'".into(),
            format!("INSERT INTO {zoned} SELECT * FROM ho_so"),
        ],
    };
    let now = (chrono::Utc::now() + chrono::Duration::hours(7))
        .naive_utc()
        .with_nanosecond(0)
        .unwrap();
    let hours = chrono::Duration::hours;
    let minutes = chrono::Duration::minutes;
    let watermark = now - hours(3);
    let t = |x: NaiveDateTime| x.format("%Y-%m-%d %H:%M:%S").to_string();
    let keys = src
        .texts(&format!("SELECT ma_ho_so FROM {s}ho_so ORDER BY ma_ho_so"))
        .await;
    let list = |ks: &[String]| {
        ks.iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let set = |key: &str, at: NaiveDateTime, bump: i32| {
        format!(
            "UPDATE {s}ho_so SET ngay_cap_nhat = '{}', so_lan_bo_sung = so_lan_bo_sung + {bump} WHERE ma_ho_so = '{key}'",
            t(at)
        )
    };
    let new = list(&keys[0..5]);
    let mut setup = vec![
        format!("CREATE TABLE {s}held AS SELECT * FROM {s}ho_so WHERE ma_ho_so IN ({new})"),
        format!("DELETE FROM {s}ho_so WHERE ma_ho_so IN ({new})"),
    ];
    // The newest row (the watermark) and rows 30 minutes, 2, 6 and 12 hours older.
    for (k, at) in [
        (5, watermark),
        (6, watermark - minutes(30)),
        (7, watermark - hours(2)),
        (8, watermark - hours(6)),
        (9, watermark - hours(12)),
    ] {
        setup.push(set(&keys[k], at, 0));
    }
    src.exec(&setup).await;
    src.exec(&derive).await;
    let url = src.url();
    let local = db_project(&src, &src.query("ho_so", "-"));
    let instants = db_project(&src, &src.query(zoned, "-"));
    for p in [&local, &instants] {
        let out = extract(p.path(), &url).await;
        assert_eq!(number_before::<u64>(&out, " read, "), Some(295), "{out}");
    }
    same_rows(
        &format!("{kind:?}: {zoned} against the local times"),
        &rows(instants.path(), DOSSIERS).await,
        &rows(local.path(), DOSSIERS).await,
    );

    // Twenty rows updated an hour ago, a late one stamped 20 minutes before the watermark,
    // five new ones.
    let mut changes: Vec<String> = keys[20..40]
        .iter()
        .map(|k| set(k, now - hours(1), 1))
        .collect();
    changes.push(set(&keys[50], watermark - minutes(20), 3));
    for (i, k) in keys[0..5].iter().enumerate() {
        changes.push(format!(
            "UPDATE {s}held SET ngay_cap_nhat = '{}' WHERE ma_ho_so = '{k}'",
            t(now - hours(1) + minutes(i as i64))
        ));
    }
    changes.push(format!("INSERT INTO {s}ho_so SELECT * FROM {s}held"));
    src.exec(&changes).await;
    src.exec(&derive).await;
    // The 27 changed or new, and the two loaded rows within the overlap.
    for p in [&local, &instants] {
        let out = extract(p.path(), &url).await;
        assert_eq!(number_before::<u64>(&out, " read, "), Some(28), "{out}");
    }
    let fresh = db_project(&src, &src.query("ho_so", "-"));
    extract(fresh.path(), &url).await;
    let want = rows(fresh.path(), DOSSIERS).await;
    assert_eq!(want.num_rows(), 300);
    same_rows(
        &format!("{kind:?}: local times, second run"),
        &rows(local.path(), DOSSIERS).await,
        &want,
    );
    same_rows(
        &format!("{kind:?}: {zoned}, second run"),
        &rows(instants.path(), DOSSIERS).await,
        &want,
    );
    println!(
        "{kind:?} watermark: 28 of 300 rows read again, as expected; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_watermark_is_an_instant_whatever_the_session_time_zone() {
    watermark_is_an_instant(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_watermark_is_an_instant_whatever_the_session_time_zone() {
    watermark_is_an_instant(Kind::Mariadb).await;
}
