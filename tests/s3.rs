//! The warehouse on S3: the same extract and report through an S3-compatible server (moto,
//! installed by scripts/test.sh) give the same results as the local folder; commits exclude
//! each other by conditional puts (If-None-Match), without `AWS_S3_ALLOW_UNSAFE_RENAME`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::report::write_fixture;
use crate::util::*;

pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn s3_server() -> S3Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]'; scripts/test.sh does)");
    let server = S3Server { child, port };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("moto_server did not start on port {port}");
}

pub fn boto(port: u16, script: &str) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n{script}"
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// The variables that point the S3 client at the test server on `port`.
pub fn s3_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

fn run_s3(project: &Path, port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(project)
        .args(args)
        .env("PARSTAT_PII_KEY", "test-key-0123456789abcdef")
        .envs(s3_env(port))
        // The safe commit path: conditional puts, whatever the caller's environment says.
        .env_remove("AWS_S3_ALLOW_UNSAFE_RENAME")
        .env_remove("AWS_CONDITIONAL_PUT")
        .output()
        .expect("run parstat")
}

#[test]
fn the_warehouse_on_s3_gives_the_same_results_as_a_folder() {
    let server = s3_server();
    let port = server.port;
    boto(port, "s3.create_bucket(Bucket='parstat')");

    let s3 = project_copy();
    write_fixture(s3.path());
    edit(
        s3.path(),
        "parstat.toml",
        "url = \"warehouse\"",
        "url = \"s3://parstat/wh\"",
    );
    let local = project_copy();
    write_fixture(local.path());

    for (p, remote) in [(s3.path(), true), (local.path(), false)] {
        let go = |args: &[&str]| {
            if remote {
                run_s3(p, port, args)
            } else {
                run(p, args)
            }
        };
        ok(go(&["extract", "dossier", "satisfaction_vote"]));
        // A rerun finds the loaded files' marks in the table's log on S3 too.
        let again = ok(go(&["extract", "dossier"]));
        assert!(
            again.contains("0 files loaded (1 already loaded)"),
            "{again}"
        );
        ok(go(&["report", "monthly_par", "--period", "2026-09"]));
        let out = p.join("preview");
        ok(go(&[
            "report",
            "monthly_par",
            "--period",
            "2026-10",
            "--preview",
            out.to_str().unwrap(),
        ]));
    }
    assert!(
        !s3.path().join("warehouse/dossier").exists(),
        "nothing local"
    );
    let keys = boto(
        port,
        "print('\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket='parstat', Prefix='wh/')['Contents']))",
    );
    assert!(
        keys.contains("wh/dossier/_delta_log/00000000000000000000.json"),
        "{keys}"
    );
    assert!(
        keys.contains("wh/published_dossier_monthly/period=2026-09/"),
        "{keys}"
    );
    for table in ["dossier_monthly", "trend_monthly", "satisfaction_monthly"] {
        let a = std::fs::read_to_string(s3.path().join(format!("preview/{table}.csv"))).unwrap();
        let b = std::fs::read_to_string(local.path().join(format!("preview/{table}.csv"))).unwrap();
        assert_eq!(a, b, "{table} differs between S3 and the local folder");
        assert!(a.lines().count() > 1, "{table} has rows");
    }
}

/// Writers that all read version 0 of one table on S3, then commit at once: every commit
/// lands at its own version (those that found theirs taken reread the log and retried), or
/// fails cleanly; no commit overwrites another and no row is lost.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_commits_to_one_table_on_s3_never_lose_rows() {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use parstat::warehouse::{self, Warehouse, WriteMode};
    use std::collections::HashMap;
    use std::sync::Arc;

    let server = s3_server();
    let port = server.port;
    boto(port, "s3.create_bucket(Bucket='parstat')");
    let options: HashMap<String, String> = [
        ("aws_endpoint_url", format!("http://127.0.0.1:{port}")),
        ("aws_access_key_id", "test".into()),
        ("aws_secret_access_key", "test".into()),
        ("aws_region", "us-east-1".into()),
        ("aws_allow_http", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let wh = Warehouse::new(Path::new("/"), "s3://parstat/wh")
        .unwrap()
        .with_storage_options(options);
    let schema = Arc::new(Schema::new(vec![
        Field::new("writer", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let batch = |writer: &str, rows: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![writer; rows as usize])),
                Arc::new(Int64Array::from((0..rows).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    };
    let props = || warehouse::commit_properties(vec![], vec![]);
    let t = wh.open("events").await.unwrap();
    warehouse::write(
        t,
        "events",
        batch("first", 1),
        None,
        WriteMode::Append,
        props(),
    )
    .await
    .unwrap();

    const WRITERS: usize = 6;
    const ROWS: i64 = 10;
    let mut tables = Vec::new();
    for _ in 0..WRITERS {
        let t = wh.open("events").await.unwrap();
        assert_eq!(t.version(), Some(0));
        tables.push(t);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for (i, t) in tables.into_iter().enumerate() {
        let (barrier, b) = (barrier.clone(), batch(&format!("w{i}"), ROWS));
        let p = props();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            warehouse::write(t, "events", b, None, WriteMode::Append, p)
                .await
                .map(|t| t.version())
        }));
    }
    let mut landed = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(v) => landed.push(v.unwrap()),
            // A clean failure names the conflict; it stored nothing.
            Err(e) => assert!(e.to_string().contains("ommit"), "{e}"),
        }
    }
    assert!(!landed.is_empty(), "no commit landed");
    landed.sort();
    let want: Vec<u64> = (1..=landed.len() as u64).collect();
    assert_eq!(
        landed, want,
        "each commit at its own version, none overwritten"
    );

    let table = wh.read("events").await.unwrap().unwrap();
    assert_eq!(table.version(), Some(landed.len() as u64));
    let ctx = datafusion::prelude::SessionContext::new();
    warehouse::register(&ctx, &table, "events").await.unwrap();
    let counts = ctx
        .sql("SELECT writer, COUNT(*) AS n FROM events GROUP BY writer ORDER BY writer")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&counts)
        .unwrap()
        .to_string();
    let mut per_writer = Vec::new();
    for b in &counts {
        // Read back as a view or dictionary: compared as plain strings.
        let w = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        let w = w.as_any().downcast_ref::<StringArray>().unwrap();
        let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            per_writer.push((w.value(i).to_string(), n.value(i)));
        }
    }
    let rows: i64 = per_writer.iter().map(|(_, n)| n).sum();
    assert_eq!(rows, 1 + ROWS * landed.len() as i64, "{text}");
    assert_eq!(per_writer.len(), 1 + landed.len(), "{text}");
    assert!(
        per_writer
            .iter()
            .all(|(w, n)| *n == if w == "first" { 1 } else { ROWS }),
        "a commit's rows are all there or not at all: {text}"
    );
}
