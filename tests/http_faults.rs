//! Peers that misbehave: the sync API returning short pages, repeating a page, never ending,
//! answering too much or dying mid-run, and an SMTP server that accepts and never answers.
//! Each ends in every row loaded, or a clear error in bounded time that loses nothing.

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::extract::{
    api_project, count, demo, dossier_dump, manifest_rows, sync_api, warehouse, SyncApi,
};
use crate::util::*;

const TOKEN: &str = "faults-token";

/// Starts tests/fixtures/sync_api.py over `data` with the misbehaviours in `opts`.
fn api(data: &Path, log: &Path, opts: &[&str]) -> SyncApi {
    sync_api(data, TOKEN, log, opts)
}

/// The demo's dossier export in a project of its own; the number of dossiers.
fn source(dossiers: &str) -> (tempfile::TempDir, i64) {
    let files = project_copy();
    let m = demo(files.path(), &["--dossiers", dossiers, "--seed", "11"]);
    let rows = manifest_rows(&m, "dossier");
    (files, rows)
}

/// `parstat extract dossier` against the API on `port`, and how long it took.
fn extract(project: &Path, port: u16) -> (Output, Duration) {
    let start = Instant::now();
    let url = format!("http://127.0.0.1:{port}");
    let o = run_with(
        project,
        &["extract", "dossier"],
        &[("SYNC_URL", &url), ("SYNC_TOKEN", TOKEN)],
    );
    (o, start.elapsed())
}

fn failed(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stderr:\n{}\nstdout:\n{}",
        stderr(o),
        stdout(o)
    );
    stderr(o)
}

/// Rows and distinct keys of the warehouse's dossier table.
async fn rows_and_keys(project: &Path) -> (i64, i64) {
    let ctx = warehouse(project).await;
    (
        count(&ctx, "SELECT count(*) FROM dossier").await,
        count(&ctx, "SELECT count(DISTINCT dossier_code) FROM dossier").await,
    )
}

/// A server that caps its page size below `page_size` still has every row read: a short page
/// is not the last one.
#[tokio::test(flavor = "multi_thread")]
async fn short_pages_are_not_the_end() {
    let (files, rows) = source("2500");
    let log = files.path().join("api.log");
    let server = api(
        &files.path().join("data"),
        &log,
        &["--server-page-size", "150"],
    );
    let p = api_project(400, "");
    let (o, _) = extract(p.path(), server.port);
    let out = ok(o);
    assert!(
        out.contains(&format!("{rows} read, {rows} written")),
        "{out}"
    );
    assert_eq!(rows_and_keys(p.path()).await, (rows, rows));
}

/// A server that ignores `page` fails the run at the second page, and moves no watermark: a
/// later run against a good server loads every dossier. The bad server repeats the newest
/// 12,000 dossiers (more than the source hands to the writer at once), so a watermark taken
/// from them would hide all the others from the rerun.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_page_fails_the_run_and_moves_no_watermark() {
    let (files, rows) = source("25000");
    let log = files.path().join("api.log");
    let p = api_project(12_000, "");
    {
        let bad = api(&files.path().join("data"), &log, &["--repeat"]);
        let (o, took) = extract(p.path(), bad.port);
        let err = failed(&o);
        assert!(
            err.contains("/api/hoso/sync page 2: the same 12000 records as page 1")
                && err.contains("ignore the `page` parameter"),
            "{err}"
        );
        assert!(took < Duration::from_secs(60), "took {took:?}");
    }
    let good = api(&files.path().join("data"), &log, &[]);
    let (o, _) = extract(p.path(), good.port);
    ok(o);
    assert_eq!(rows_and_keys(p.path()).await, (rows, rows));
}

/// Paging beyond `max_pages` is an error naming the setting, not a silent stop.
#[test]
fn reaching_the_page_cap_fails_the_run() {
    let (files, _) = source("2500");
    let log = files.path().join("api.log");
    let server = api(&files.path().join("data"), &log, &[]);
    let p = api_project(400, "max_pages = 3\n");
    let (o, _) = extract(p.path(), server.port);
    let err = failed(&o);
    assert!(
        err.contains("3 pages read and the server has not reached its last page")
            && err.contains("`max_pages` of connection `motcua_api`"),
        "{err}"
    );
}

/// A body past `max_response_mib` fails the run, and the client stops reading there: the
/// server (256 MiB to send, no Content-Length) could write only what the socket buffers hold.
#[test]
fn a_body_over_the_cap_fails_the_run_without_reading_it_all() {
    let (files, _) = source("200");
    let log = files.path().join("api.log");
    let server = api(&files.path().join("data"), &log, &["--stream-mib", "256"]);
    let p = api_project(400, "max_response_mib = 1\n");
    let (o, took) = extract(p.path(), server.port);
    let err = failed(&o);
    assert!(
        err.contains("page 1: the response is larger than 1 MiB")
            && err.contains("`max_response_mib` of connection `motcua_api`"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    // The server logs what it wrote once the client has hung up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let written = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(n) = text
            .lines()
            .find_map(|l| l.strip_prefix("streamed "))
            .and_then(|n| n.parse::<u64>().ok())
        {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "the server never saw the client hang up"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        written < 32 << 20,
        "{written} bytes went out of 256 MiB: the client read past its cap"
    );
    drop(server);
}

/// The server dies mid-answer after six pages of 2,000 (more than the source hands to the
/// writer at once; rows read in key order, so their update times span the whole range): the
/// run exits 1, and a rerun against a healthy server gives the table the files give, row for
/// row, no dossier lost or twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_dying_mid_run_loses_nothing_after_a_rerun() {
    let (files, rows) = source("25000");
    ok(run(files.path(), &["extract", "dossier"]));
    let from_files = dossier_dump(files.path()).await;
    let log = files.path().join("api.log");
    let p = api_project(2000, "");
    {
        let dying = api(
            &files.path().join("data"),
            &log,
            &["--order", "key", "--die-after", "6"],
        );
        let (o, took) = extract(p.path(), dying.port);
        let err = failed(&o);
        assert!(err.contains("/api/hoso/sync page 7:"), "{err}");
        assert!(took < Duration::from_secs(60), "took {took:?}");
    }
    let healthy = api(&files.path().join("data"), &log, &[]);
    let (o, _) = extract(p.path(), healthy.port);
    ok(o);
    assert_eq!(rows_and_keys(p.path()).await, (rows, rows));
    assert!(
        dossier_dump(p.path()).await == from_files,
        "the rerun's table differs from the files'"
    );
}

/// `page_size = 0` (a page of nothing: paging would never advance) and a 0 cap are refused
/// by `parstat check`, each at its value.
#[test]
fn zero_page_size_and_caps_are_refused_by_check() {
    let p = api_project(400, "max_response_mib = 0\n");
    let text = edit(p.path(), "parstat.toml", "page_size = 400", "page_size = 0");
    let out = parstat(p.path(), &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for (key, value) in [
        ("page_size", "page_size = 0"),
        ("max_response_mib", "max_response_mib = 0"),
    ] {
        let (line, col) = pos(&text, value);
        let want = format!(
            "parstat.toml:{line}:{}: error: `{key}` must be at least 1",
            col + key.len() + 3
        );
        assert!(
            err.lines().any(|l| l.starts_with(&want)),
            "{want}\nin:\n{err}"
        );
    }
}

/// An SMTP server that accepts connections and never says a word: `parstat report` fails
/// within a few timeouts (the first message waits the timeout, the others do not wait again)
/// with an error naming the timeout, instead of hanging.
#[test]
fn a_silent_smtp_server_times_out() {
    let p = crate::report::demo_project();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    crate::deliver::use_smtp(p.path(), port);
    edit(
        p.path(),
        "parstat.toml",
        "security = \"none\"",
        "security = \"none\"\ntimeout_secs = 2",
    );
    let start = Instant::now();
    let o = run(p.path(), &["report", "monthly_par", "--period", "2021-10"]);
    let took = start.elapsed();
    let err = failed(&o);
    assert!(
        err.contains(&format!(
            "the SMTP server 127.0.0.1:{port} did not answer within 2 s (`[mail.smtp] timeout_secs`)"
        )),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}
