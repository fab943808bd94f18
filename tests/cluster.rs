//! Report SQL on a Ballista cluster started from the parstat binary (a scheduler and two
//! executors on loopback) over a warehouse on S3 (moto): the cluster's tables equal the local
//! engine's, value by value; `query` and `test --data` run there; a dead executor or scheduler
//! is a clear error and a rerun publishes the same tables.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::report::demo_data;
use crate::s3::{boto, s3_env, s3_server};
use crate::util::*;

/// A child process killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str, p: &Proc) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on {port}:\n{}", p.log());
}

fn spawn(args: &[&str], s3_port: u16, log: PathBuf) -> Proc {
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_parstat"))
        .args(args)
        .envs(s3_env(s3_port))
        .env("PARSTAT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc { child, log }
}

struct Cluster {
    scheduler: Proc,
    executors: Vec<Proc>,
    port: u16,
    dir: tempfile::TempDir,
    s3_port: u16,
    vcores: u32,
}

impl Cluster {
    /// A cluster that loses no executor to a late heartbeat: the tests run beside many other
    /// processes on two cores, where a heartbeat can be seconds late.
    fn start(s3_port: u16, executors: usize) -> Cluster {
        Cluster::with(s3_port, executors, 2, 60)
    }

    /// A cluster whose scheduler gives up on an executor 6 s after its last heartbeat, for
    /// the tests that kill one.
    fn start_for_kills(s3_port: u16, executors: usize) -> Cluster {
        Cluster::with(s3_port, executors, 2, 6)
    }

    /// A cluster whose executors run `vcores` tasks at once each.
    fn with_vcores(s3_port: u16, executors: usize, vcores: u32) -> Cluster {
        Cluster::with(s3_port, executors, vcores, 60)
    }

    fn with(s3_port: u16, executors: usize, vcores: u32, executor_timeout_secs: u32) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let scheduler = spawn(
            &[
                "cluster",
                "scheduler",
                "--port",
                &port.to_string(),
                "--executor-timeout-secs",
                &executor_timeout_secs.to_string(),
            ],
            s3_port,
            dir.path().join("scheduler.log"),
        );
        wait_port(port, "the scheduler", &scheduler);
        let mut c = Cluster {
            scheduler,
            executors: vec![],
            port,
            dir,
            s3_port,
            vcores,
        };
        for _ in 0..executors {
            c.add_executor();
        }
        // The executors register with their first call to the scheduler.
        std::thread::sleep(Duration::from_secs(2));
        c
    }

    fn add_executor(&mut self) {
        let i = self.executors.len();
        let (flight, grpc) = (free_port(), free_port());
        let work = self.dir.path().join(format!("work{i}"));
        std::fs::create_dir_all(&work).unwrap();
        let p = spawn(
            &[
                "cluster",
                "executor",
                "--scheduler",
                &format!("df://127.0.0.1:{}", self.port),
                "--flight-port",
                &flight.to_string(),
                "--grpc-port",
                &grpc.to_string(),
                "--vcores",
                &self.vcores.to_string(),
                "--heartbeat-secs",
                "2",
                "--work-dir",
                work.to_str().unwrap(),
            ],
            self.s3_port,
            self.dir.path().join(format!("executor{i}.log")),
        );
        wait_port(flight, "an executor", &p);
        self.executors.push(p);
    }

    fn engine(&self) -> String {
        format!(
            "\n[engine]\nkind = \"ballista\"\nscheduler = \"df://127.0.0.1:{}\"\nquery_timeout_secs = 30\n",
            self.port
        )
    }
}

fn go(project: &Path, s3_port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(project)
        .args(args)
        .env("PARSTAT_PII_KEY", "test-key-0123456789abcdef")
        .envs(s3_env(s3_port))
        .output()
        .expect("run parstat")
}

/// Sets `[engine]` of `project` to `engine` (empty: the local default).
fn set_engine(project: &Path, engine: &str) {
    let path = project.join("parstat.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let base = text.split("\n[engine]").next().unwrap().to_string();
    std::fs::write(&path, base + engine).unwrap();
}

/// Each report's preview tables for `period`, as `(report/table.csv, contents)`.
fn previews(project: &Path, s3_port: u16, period: &str, tag: &str) -> Vec<(String, String)> {
    previews_on(project, s3_port, period, tag, None)
}

/// `previews`, with the cluster's logs in the message if a report fails.
fn previews_on(
    project: &Path,
    s3_port: u16,
    period: &str,
    tag: &str,
    cluster: Option<&Cluster>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for report in ["monthly_par", "monthly_investment"] {
        let dir = project.join(format!("preview-{tag}-{report}"));
        let o = go(
            project,
            s3_port,
            &[
                "report",
                report,
                "--period",
                period,
                "--preview",
                dir.to_str().unwrap(),
            ],
        );
        if let (Some(c), false) = (cluster, o.status.success()) {
            let executors: Vec<String> = c.executors.iter().map(Proc::log).collect();
            panic!(
                "{report}: {}\nthe scheduler:\n{}\nthe executors:\n{}",
                stderr(&o),
                c.scheduler.log(),
                executors.join("\n----\n")
            );
        }
        ok(o);
        for (path, bytes) in files_under(&dir) {
            if path.extension().is_some_and(|e| e == "csv") {
                let name = format!("{report}/{}", path.file_name().unwrap().to_string_lossy());
                out.push((name, String::from_utf8(bytes).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A project over a warehouse on S3 with the demo province until December 2021, extracted.
fn s3_project(s3_port: u16) -> tempfile::TempDir {
    boto(s3_port, "s3.create_bucket(Bucket='parstat')");
    let p = project_copy();
    edit(
        p.path(),
        "parstat.toml",
        "url = \"warehouse\"",
        "url = \"s3://parstat/wh\"",
    );
    demo_data(p.path());
    ok(go(p.path(), s3_port, &["extract", "--all"]));
    p
}

#[test]
fn the_cluster_computes_what_the_local_engine_computes() {
    let s3 = s3_server();
    let p = s3_project(s3.port);
    let local = previews(p.path(), s3.port, "2021-11", "local");
    assert!(
        local.len() >= 4,
        "{:?}",
        local.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    let sizes: Vec<_> = local.iter().map(|(n, t)| (n, t.lines().count())).collect();
    // Only the projects that ended are none that month.
    assert!(
        sizes
            .iter()
            .all(|(n, rows)| *rows > 1 || n.contains("ended_projects")),
        "tables without rows: {sizes:?}"
    );

    let cluster = Cluster::start(s3.port, 2);
    set_engine(p.path(), &cluster.engine());
    let checked = ok(go(p.path(), s3.port, &["check", "--ping"]));
    assert!(checked.contains("answers"), "{checked}");
    let remote = previews_on(p.path(), s3.port, "2021-11", "cluster", Some(&cluster));
    assert_eq!(
        local.iter().map(|l| &l.0).collect::<Vec<_>>(),
        remote.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    for ((name, a), (_, b)) in local.iter().zip(&remote) {
        assert_eq!(
            a, b,
            "{name} differs between the local engine and the cluster"
        );
    }
    // The work ran on both executors, not in the client.
    for (i, e) in cluster.executors.iter().enumerate() {
        assert!(
            e.log().contains("task"),
            "executor {i} ran no task:\n{}\nthe scheduler:\n{}",
            e.log(),
            cluster.scheduler.log()
        );
    }

    // `query` on the cluster, against the local engine's answer.
    let sql =
        "SELECT agency_code, count(*) AS n FROM dossier GROUP BY agency_code ORDER BY agency_code";
    let on_cluster = ok(go(p.path(), s3.port, &["query", sql, "--format", "csv"]));
    let tests_cluster = go(p.path(), s3.port, &["test", "--data"]);
    set_engine(p.path(), "");
    let on_local = ok(go(p.path(), s3.port, &["query", sql, "--format", "csv"]));
    assert_eq!(on_cluster, on_local);
    assert!(on_local.lines().count() > 2, "{on_local}");
    let tests_local = go(p.path(), s3.port, &["test", "--data"]);
    assert_eq!(tests_cluster.status.code(), tests_local.status.code());
    // Each test's outcome and count of offending rows; which few rows a warning shows as
    // examples is not ordered, on either engine.
    let outcomes = |o: &Output| -> Vec<String> {
        stdout(o)
            .lines()
            .filter(|l| !l.trim_start().starts_with(['|', '+']))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(outcomes(&tests_cluster), outcomes(&tests_local));
    assert!(
        stdout(&tests_local).contains("pass"),
        "{}",
        stdout(&tests_local)
    );
}

#[test]
fn an_unreachable_scheduler_is_a_clear_error_and_nothing_is_published() {
    let s3 = s3_server();
    let p = s3_project(s3.port);
    let port = free_port();
    set_engine(
        p.path(),
        &format!("\n[engine]\nkind = \"ballista\"\nscheduler = \"df://127.0.0.1:{port}\"\n"),
    );
    let o = go(p.path(), s3.port, &["check", "--ping"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "the Ballista scheduler at df://127.0.0.1:{port} does not answer"
        )),
        "{}",
        stderr(&o)
    );
    let o = go(
        p.path(),
        s3.port,
        &["report", "monthly_par", "--period", "2021-11"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("parstat cluster scheduler"),
        "{}",
        stderr(&o)
    );
    assert_nothing_published(s3.port);
}

/// No `published_*` object in the warehouse's bucket.
fn assert_nothing_published(s3_port: u16) {
    let keys = boto(
        s3_port,
        "print('\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket='parstat', Prefix='wh/published_').get('Contents', [])))",
    );
    assert!(
        keys.trim().is_empty(),
        "published after a failed query: {keys}"
    );
}

/// Each published table of `monthly_par` for `period`, read by the local engine, its rows
/// sorted, without the columns that name the run.
fn published(project: &Path, s3_port: u16, tables: &[String], period: &str) -> Vec<String> {
    tables
        .iter()
        .map(|t| {
            let sql = format!(
                "SELECT * EXCLUDE (run_id, published_at) FROM published_{t} WHERE period = '{period}'"
            );
            let out = ok(go(project, s3_port, &["query", &sql, "--format", "csv"]));
            let mut lines: Vec<&str> = out.lines().collect();
            lines[1..].sort();
            format!("{t}:\n{}", lines.join("\n"))
        })
        .collect()
}

#[test]
fn an_executor_killed_during_a_report_fails_it_clearly_or_retries_and_a_rerun_publishes_the_same() {
    let s3 = s3_server();
    let p = s3_project(s3.port);
    let tables: Vec<String> = previews(p.path(), s3.port, "2021-11", "local")
        .into_iter()
        .filter_map(|(n, _)| {
            let t = n.strip_prefix("monthly_par/")?.strip_suffix(".csv")?;
            // The attachment's copy of each table carries the period in its name.
            (!t.ends_with("_2021-11")).then(|| t.to_string())
        })
        .collect();
    assert!(tables.len() >= 2, "{tables:?}");
    ok(go(
        p.path(),
        s3.port,
        &["report", "monthly_par", "--period", "2021-11"],
    ));
    let expected = published(p.path(), s3.port, &tables, "2021-11");
    let with_rows = expected.iter().filter(|t| t.lines().count() > 2).count();
    assert!(with_rows >= 4, "{expected:#?}");

    let mut cluster = Cluster::start_for_kills(s3.port, 2);
    set_engine(p.path(), &cluster.engine());
    // The report starts; one executor dies while it runs.
    let project = p.path().to_path_buf();
    let s3_port = s3.port;
    let started = Instant::now();
    let report = std::thread::spawn(move || {
        go(
            &project,
            s3_port,
            &["report", "monthly_par", "--period", "2021-11"],
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    let victim = cluster.executors.remove(0);
    drop(victim);
    let first = report.join().unwrap();
    eprintln!(
        "the report with a killed executor: exit {:?} after {:.1} s",
        first.status.code(),
        started.elapsed().as_secs_f64()
    );
    match first.status.code() {
        Some(0) => {}
        Some(1) => assert!(
            stderr(&first).to_lowercase().contains("executor") || stderr(&first).contains("task"),
            "the error names the cause:\n{}",
            stderr(&first)
        ),
        other => panic!("exit {other:?}: {}", stderr(&first)),
    }
    // A rerun, on the surviving executor, publishes what the local engine published.
    let rerun = go(
        p.path(),
        s3.port,
        &["report", "monthly_par", "--period", "2021-11"],
    );
    assert!(
        rerun.status.success(),
        "the rerun: {}\nthe scheduler:\n{}\nthe surviving executor:\n{}",
        stderr(&rerun),
        cluster.scheduler.log(),
        cluster.executors[0].log()
    );
    set_engine(p.path(), "");
    let after = published(p.path(), s3.port, &tables, "2021-11");
    for (a, b) in expected.iter().zip(&after) {
        let only_a: Vec<_> = a.lines().filter(|l| !b.lines().any(|m| m == *l)).collect();
        let only_b: Vec<_> = b.lines().filter(|l| !a.lines().any(|m| m == *l)).collect();
        assert!(
            a == b,
            "{}: published by the local engine only: {only_a:#?}\nafter the cluster's rerun only: {only_b:#?}\n{a}\n---\n{b}",
            a.lines().next().unwrap()
        );
    }
    drop(cluster);
}

/// A task slot at a time makes every task of a UNION's stage own one branch: Ballista 55's
/// adaptive planner then ran the wrong branch in each task (a row lost or doubled, seen in
/// trend_monthly). Each UNION below has branches that end in one partition (an aggregate, a
/// sort of one file), the shape that broke.
#[test]
fn a_union_on_an_executor_with_one_task_slot_loses_and_doubles_no_row() {
    let s3 = s3_server();
    let p = s3_project(s3.port);
    let queries = [
        "SELECT 'all' AS k, count(*) AS n FROM dossier \
         UNION ALL SELECT 'agencies', count(DISTINCT agency_code) FROM dossier \
         UNION ALL SELECT 'none', count(*) FROM dossier WHERE agency_code IS NULL ORDER BY k",
        "SELECT agency_code, n FROM (SELECT agency_code, count(*) AS n FROM dossier GROUP BY agency_code) \
         UNION ALL SELECT 'total', count(*) FROM dossier ORDER BY agency_code",
        // A TopK: under the adaptive planner, debug executors panicked decoding it.
        "SELECT agency_code, count(*) AS n FROM dossier GROUP BY agency_code \
         ORDER BY n DESC, agency_code LIMIT 4",
    ];
    let local: Vec<String> = queries
        .iter()
        .map(|q| ok(go(p.path(), s3.port, &["query", q, "--format", "csv"])))
        .collect();
    let before = previews(p.path(), s3.port, "2021-11", "local");

    let cluster = Cluster::with_vcores(s3.port, 1, 1);
    // One slot runs the tasks of a report's concurrent queries one after another: in a debug
    // build beside the other tests, that is longer than the other tests' 30 s per query.
    let engine = cluster
        .engine()
        .replace("query_timeout_secs = 30", "query_timeout_secs = 300");
    assert_ne!(engine, cluster.engine());
    set_engine(p.path(), &engine);
    for (q, want) in queries.iter().zip(&local) {
        assert!(want.lines().count() >= 4, "{want}");
        let o = go(p.path(), s3.port, &["query", q, "--format", "csv"]);
        assert!(
            o.status.success(),
            "{q}: {}\nthe scheduler:\n{}\nthe executor:\n{}",
            stderr(&o),
            cluster.scheduler.log(),
            cluster.executors[0].log()
        );
        assert_eq!(&stdout(&o), want, "{q}");
    }
    // The report set, trend_monthly's UNION among it, on the one slot.
    let after = previews_on(p.path(), s3.port, "2021-11", "one-slot", Some(&cluster));
    assert_eq!(before.len(), after.len());
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{name} differs on a one-slot cluster");
    }
    let trend = after
        .iter()
        .find(|(n, _)| n == "monthly_par/trend_monthly.csv")
        .expect("trend_monthly in the preview");
    assert!(trend.1.lines().count() >= 2, "{}", trend.1);
}

/// Executors that cannot read the warehouse (pointed at another S3 server, where the bucket
/// is empty) fail the report with the storage's own error, and nothing is published.
#[test]
fn a_table_the_executors_cannot_read_fails_the_report_clearly_and_publishes_nothing() {
    let s3 = s3_server();
    let p = s3_project(s3.port);
    let elsewhere = s3_server();
    boto(elsewhere.port, "s3.create_bucket(Bucket='parstat')");
    let cluster = Cluster::start(elsewhere.port, 1);
    set_engine(p.path(), &cluster.engine());
    let o = go(
        p.path(),
        s3.port,
        &["report", "monthly_par", "--period", "2021-11"],
    );
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{err}\nthe scheduler:\n{}\nthe executor:\n{}",
        cluster.scheduler.log(),
        cluster.executors[0].log()
    );
    // The last line is parstat's: the report's SQL file, then the executor's cause (the file
    // it could not read).
    let last = err
        .lines()
        .rfind(|l| l.starts_with("Error: "))
        .unwrap_or("");
    assert!(
        last.contains(".sql: the cluster failed") && last.contains("not found"),
        "{err}"
    );
    assert!(last.contains(".parquet"), "{last}");
    assert_nothing_published(s3.port);
}
