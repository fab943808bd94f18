//! The warehouse on S3: the same extract and report through an S3-compatible server (moto,
//! installed by scripts/test.sh) give the same results as the local folder.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::report::write_fixture;
use crate::util::*;

struct S3Server {
    child: Child,
    port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3_server() -> S3Server {
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

fn boto(port: u16, script: &str) -> String {
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

fn run_s3(project: &Path, port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(project)
        .args(args)
        .env("PARSTAT_PII_KEY", "test-key-0123456789abcdef")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
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
