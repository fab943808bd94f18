//! The scheduler on a simulated clock (`PARSTAT_TEST_CLOCK`): the shipped schedules run
//! through months, with PostgreSQL down at one report's time and the SMTP server down for a
//! day, and every (report, period, recipient) delivered exactly once; and two daemons, one
//! paused (SIGSTOP) past its lease mid-send and resumed, sending nothing twice.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::deliver::{free_port, messages, smtp_at, use_smtp};
use crate::serve::Serve;
use crate::util::*;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

pub(crate) fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The clock file the daemons read, moved forward by the test.
pub(crate) struct SimClock {
    file: PathBuf,
}

impl SimClock {
    pub(crate) fn new(dir: &Path, start: DateTime<Utc>) -> SimClock {
        let c = SimClock {
            file: dir.join("clock"),
        };
        c.set(start);
        c
    }

    pub(crate) fn var(&self) -> (&'static str, &str) {
        ("PARSTAT_TEST_CLOCK", self.file.to_str().unwrap())
    }

    pub(crate) fn set(&self, t: DateTime<Utc>) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, t.to_rfc3339()).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    /// Sets the clock to `t` and waits until the daemon has done everything due by then;
    /// the next instant it has something to do.
    fn advance(&self, t: DateTime<Utc>, within: Duration) -> Option<DateTime<Utc>> {
        self.set(t);
        let idle = PathBuf::from(format!("{}.idle", self.file.display()));
        let until = Instant::now() + within;
        loop {
            if let Ok(text) = std::fs::read_to_string(&idle) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if at(v["at"].as_str().unwrap()) == t {
                    return v["next"].as_str().map(at);
                }
            }
            assert!(
                Instant::now() < until,
                "the daemon did not finish what was due by {t} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A TCP relay to PostgreSQL that the test can switch off: then every connection is refused
/// (accepted and closed at once), as a database that is down.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Relay {
    fn to(target: &'static str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Relay { port, up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// Messages by (report, period, recipient).
type Sent = BTreeMap<(String, String, String), usize>;

/// The report messages in `mbox` (not the operators' alerts), by (report, period, recipient),
/// counted; the alerts' subjects.
fn tally(mbox: &Path) -> (Sent, Vec<String>) {
    let mut reports = BTreeMap::new();
    let mut alerts = Vec::new();
    for m in messages(mbox, None) {
        let subject = m["subject"].as_str().unwrap_or_default().to_string();
        if subject.starts_with("[parstat]") {
            alerts.push(subject);
            continue;
        }
        // <hash.REPORT.PERIOD@parstat>
        let id = m["message_id"].as_str().unwrap().trim_matches(['<', '>']);
        let parts: Vec<&str> = id.trim_end_matches("@parstat").split('.').collect();
        let key = (
            parts[1].to_string(),
            parts[2].to_string(),
            m["to"].as_str().unwrap().to_string(),
        );
        *reports.entry(key).or_insert(0) += 1;
    }
    (reports, alerts)
}

/// (job, period, status, deliveries, error) of every run; the error only for a failed
/// report (`runs show`).
fn runs(project: &Path) -> Vec<(String, String, String, i64, String)> {
    run_lines(project)
        .into_iter()
        .map(|r| {
            let error = if r.status == "failed" && !r.period.is_empty() {
                let show = ok(run(project, &["runs", "show", &r.id]));
                show.lines()
                    .find_map(|l| l.strip_prefix("error:"))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            } else {
                String::new()
            };
            (r.job, r.period, r.status, r.sent, error)
        })
        .collect()
}

/// The shipped pipelines with dossiers read from PostgreSQL through `relay`, mail to an SMTP
/// server on `smtp_port` (with `smtp_timeout` seconds per message), a 3-second lease and the
/// `extra` scheduler settings.
fn simulated_project(
    schema: &str,
    relay: &Relay,
    smtp_port: u16,
    smtp_timeout: u64,
    extra: &str,
) -> tempfile::TempDir {
    let p = project_copy();
    ok(run(
        p.path(),
        &[
            "demo",
            "--data-only",
            "--until",
            "2026-11",
            "--dossiers",
            "3000",
            "--postgres",
            PG,
            "--pg-schema",
            schema,
        ],
    ));
    edit(
        p.path(),
        "parstat.toml",
        "[connections.exports]",
        &format!(
            "[connections.motcua]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:{}/test\"\n\n[connections.exports]",
            relay.port
        ),
    );
    let query = crate::extract::db_query(false).replace("SCHEMA_", schema);
    std::fs::write(
        p.path().join("pipelines/dossier.toml"),
        format!("kind = \"extract\"\ndataset = \"dossier\"\nconnection = \"motcua\"\nmode = \"merge\"\noverlap_minutes = 60\nschedule = \"0 30 1 * * *\"\nquery = \"\"\"\n{query}\n\"\"\"\n"),
    )
    .unwrap();
    use_smtp(p.path(), smtp_port);
    let settings = p.path().join("parstat.toml");
    let mut s = std::fs::read_to_string(&settings).unwrap();
    s = s.replace(
        "\nport = ",
        &format!("\ntimeout_secs = {smtp_timeout}\nport = "),
    );
    s.push_str(&format!(
        "\n[scheduler]\nlease_seconds = 3\ngrace_seconds = 30\n{extra}"
    ));
    std::fs::write(&settings, s).unwrap();
    p
}

/// Every extract run once, and October's reports published (not sent): the history a
/// running province has when the simulation starts.
fn seed(project: &Path, clock: &SimClock) {
    ok(run_with(project, &["extract", "--all"], &[clock.var()]));
    ok(run_with(
        project,
        &["backfill", "--all", "--from", "2026-10", "--to", "2026-10"],
        &[clock.var()],
    ));
}

fn drop_schema(schema: &str) {
    let _ = std::process::Command::new("psql")
        .args([
            PG,
            "-qc",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .output();
}

#[test]
fn three_simulated_months_deliver_every_report_once() {
    let schema = format!("parstat_sim_{}", std::process::id());
    let relay = Relay::to("127.0.0.1:5432");
    let port = free_port();
    let p = simulated_project(&schema, &relay, port, 5, "retry_minutes = 360\n");
    let mbox = p.path().join("mbox");
    let clock = SimClock::new(p.path(), at("2026-12-01T00:10:00+07:00"));
    // Everything extracted once, just after November ended; October's reports were done.
    seed(p.path(), &clock);
    let mut smtp = Some(smtp_at(port, &mbox, &[]));
    let mut serve = Serve::start_with(p.path(), &[clock.var()]);
    serve.expect("serving: lease epoch", Duration::from_secs(90));

    // PostgreSQL is down from the evening of 31 December until after the December report was
    // due (07:00 on 3 January); the SMTP server is down for a day around the January one.
    let pg_down = at("2026-12-31T20:00:00+07:00");
    let pg_up = at("2027-01-03T09:30:00+07:00");
    let smtp_down = at("2027-02-02T12:00:00+07:00");
    let smtp_up = at("2027-02-03T12:00:00+07:00");
    let end = at("2027-02-06T00:00:00+07:00");
    let mut events = vec![pg_down, pg_up, smtp_down, smtp_up, end];
    let mut t = at("2026-12-01T00:10:00+07:00");
    let mut steps = 0;
    while t < end {
        let next = clock.advance(t, Duration::from_secs(300));
        steps += 1;
        if t == pg_down {
            relay.set(false);
        } else if t == pg_up {
            relay.set(true);
        } else if t == smtp_down {
            smtp = None;
        } else if t == smtp_up {
            smtp = Some(smtp_at(port, &mbox, &[]));
        }
        events.retain(|&e| e > t);
        t = next
            .into_iter()
            .chain(events.first().copied())
            .min()
            .expect("the end is an event");
    }
    clock.advance(end, Duration::from_secs(300));
    serve.drain();
    serve.signal("-TERM");
    serve.expect("stopped", Duration::from_secs(60));
    drop(smtp);
    drop_schema(&schema);

    // Every report, period and recipient exactly once.
    let (sent, alerts) = tally(&mbox);
    let mut want = BTreeMap::new();
    for period in ["2026-11", "2026-12", "2027-01"] {
        for (report, to) in [
            ("monthly_par", "chu-tich@example.gov.vn"),
            ("monthly_par", "van-phong@example.gov.vn"),
            ("monthly_investment", "chu-tich@example.gov.vn"),
            ("monthly_investment", "so-tai-chinh@example.gov.vn"),
        ] {
            want.insert((report.to_string(), period.to_string(), to.to_string()), 1);
        }
    }
    assert_eq!(sent, want, "daemon said: {:#?}", serve.seen);

    // The run history says so: one succeeded run per report and period, which sent both
    // messages (a failed one sends nothing that is later sent again).
    let history = runs(p.path());
    for (report, period) in want.keys().map(|(r, p, _)| (r, p)) {
        let ok_runs: Vec<_> = history
            .iter()
            .filter(|r| &r.0 == report && &r.1 == period && r.2 == "succeeded")
            .collect();
        assert_eq!(ok_runs.len(), 1, "{report} {period}: {history:#?}");
        assert_eq!(ok_runs[0].3, 2, "{report} {period} sent both: {history:#?}");
    }
    // The December report first failed on its stale dossiers (their extract failing with the
    // database down) and the January one on the SMTP server.
    let failed = |report: &str, period: &str| -> Vec<String> {
        history
            .iter()
            .filter(|r| r.0 == report && r.1 == period && r.2 == "failed")
            .map(|r| r.4.clone())
            .collect()
    };
    // Once only: the retry six hours later, with the database back, extracted the dossiers
    // itself rather than wait for their 01:30 schedule.
    let december = failed("monthly_par", "2026-12");
    assert!(
        december.len() == 1 && december[0].contains("data not fresh: dossier"),
        "{december:#?}"
    );
    let january = failed("monthly_par", "2027-01");
    assert!(!january.is_empty(), "{history:#?}");
    assert!(
        failed("monthly_par", "2026-11").is_empty(),
        "November ran on time: {history:#?}"
    );
    // The operators heard once of the December report (the January alert could not be sent:
    // the SMTP server was down), and of nothing else but the dossier extracts' failures.
    let par_alerts = alerts
        .iter()
        .filter(|s| s.ends_with(": monthly_par"))
        .count();
    assert_eq!(par_alerts, 1, "{alerts:#?}");
    assert!(
        alerts
            .iter()
            .all(|s| s.ends_with(": monthly_par") || s.ends_with(": dossier")),
        "{alerts:#?}"
    );
    assert!(
        steps > 100,
        "the clock moved through the schedules: {steps} steps"
    );
    eprintln!(
        "{steps} clock steps, {} runs ({} failed), {} report messages, alerts: {alerts:?}",
        history.len(),
        history.iter().filter(|r| r.2 == "failed").count(),
        sent.values().sum::<usize>()
    );
}

#[test]
fn a_daemon_paused_past_its_lease_mid_send_sends_nothing_twice() {
    let schema = format!("parstat_pause_{}", std::process::id());
    let relay = Relay::to("127.0.0.1:5432");
    let port = free_port();
    let p = simulated_project(&schema, &relay, port, 30, "");
    let mbox = p.path().join("mbox");
    let clock = SimClock::new(p.path(), at("2026-12-03T06:59:00+07:00"));
    seed(p.path(), &clock);
    // The server holds each message's confirmation for 4 s: the first daemon is paused while
    // it waits for one.
    let _smtp = smtp_at(port, &mbox, &["--delay-data", "4"]);
    let mut first = Serve::start_with(p.path(), &[clock.var()]);
    first.expect("serving: lease epoch", Duration::from_secs(90));
    let mut second = Serve::start_with(p.path(), &[clock.var()]);
    second.expect("waiting: the lease is held by", Duration::from_secs(90));

    clock.set(at("2026-12-03T07:00:00+07:00"));
    first.expect("running monthly_par 2026-11", Duration::from_secs(60));
    let until = Instant::now() + Duration::from_secs(120);
    while messages(&mbox, None).is_empty() {
        assert!(
            Instant::now() < until,
            "the first daemon sent nothing: {:?}",
            first.seen
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    first.signal("-STOP");
    // The second takes over once the first's lease lapses, and runs the report itself.
    second.expect("serving: lease epoch", Duration::from_secs(60));
    first.signal("-CONT");
    let status = first.child.wait().unwrap();
    first.drain();
    assert!(
        !status.success(),
        "the first stops once it sees its lease gone: {:?}",
        first.seen
    );
    let until = Instant::now() + Duration::from_secs(180);
    loop {
        let done = runs(p.path())
            .iter()
            .any(|r| r.0 == "monthly_par" && r.1 == "2026-11" && r.2 == "succeeded");
        if done {
            break;
        }
        assert!(
            Instant::now() < until,
            "the second did not finish the report: {:?}",
            second.seen
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    second.signal("-TERM");
    second.expect("stopped", Duration::from_secs(60));
    drop_schema(&schema);

    let (sent, _) = tally(&mbox);
    let par: Vec<_> = sent.iter().filter(|(k, _)| k.0 == "monthly_par").collect();
    assert_eq!(
        par.len(),
        2,
        "both recipients of monthly_par: {sent:?}\nfirst: {:?}\nsecond: {:?}",
        first.seen,
        second.seen
    );
    assert!(par.iter().all(|(_, &n)| n == 1), "each once: {sent:?}");
    let history = runs(p.path());
    let succeeded = history
        .iter()
        .filter(|r| r.0 == "monthly_par" && r.1 == "2026-11" && r.2 == "succeeded")
        .count();
    assert_eq!(succeeded, 1, "{history:#?}");
    // The second sent only what the first had not: the first's message, confirmed after it
    // resumed, was recorded as sent and honoured.
    let second_run = history
        .iter()
        .find(|r| r.0 == "monthly_par" && r.1 == "2026-11" && r.2 == "succeeded")
        .unwrap();
    assert_eq!(second_run.3, 1, "{history:#?}");
    eprintln!("first: {:?}\nsecond: {:?}", first.seen, second.seen);
}
