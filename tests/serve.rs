//! `parstat serve`: jobs on second-level schedules in order, one scheduler at a time (a
//! second waits while the first lives and takes over when it is killed), graceful stop on
//! SIGTERM, and the catch-up policy applied on start.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::report::demo_project;
use crate::util::*;

pub(crate) struct Serve {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Serve {
    fn start(project: &Path) -> Serve {
        Serve::start_with(project, &[])
    }

    /// `parstat serve` with more environment variables (a simulated clock).
    pub(crate) fn start_with(project: &Path, env: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parstat"))
            .arg("--project")
            .arg(project)
            .arg("serve")
            .env("PARSTAT_PII_KEY", "test-key-0123456789abcdef")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Serve {
            child,
            lines,
            seen: vec![],
        }
    }

    /// Waits for a stdout line containing `needle`.
    pub(crate) fn expect(&mut self, needle: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        while Instant::now() < until {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(l.clone());
                if l.contains(needle) {
                    return l;
                }
            }
        }
        panic!("no line with {needle:?} in {:?}", self.seen);
    }

    /// Reads what it printed so far into `seen`.
    pub(crate) fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        let s = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Schedules every pipeline on `extract` / `report` (six-field cron) and a short lease.
fn schedules(project: &Path, extract: &str, report: &str) {
    for e in std::fs::read_dir(project.join("pipelines")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let cron = if text.contains("kind = \"report\"") {
            report
        } else {
            extract
        };
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("schedule = ") {
                    format!("schedule = \"{cron}\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&p, text + "\n").unwrap();
    }
    let settings = project.join("parstat.toml");
    let mut s = std::fs::read_to_string(&settings).unwrap();
    s.push_str("\n[scheduler]\nlease_seconds = 3\ngrace_seconds = 30\n");
    std::fs::write(&settings, s).unwrap();
}

fn history(project: &Path) -> Vec<(String, String, String)> {
    run_lines(project)
        .into_iter()
        .map(|r| (r.job, r.period, r.status))
        .collect()
}

/// Adds `line` (a key of the report job) after the `period` line of a report pipeline.
fn set_option(project: &Path, report: &str, line: &str) {
    edit(
        project,
        &format!("pipelines/{report}.toml"),
        "period = \"previous_month\"",
        &format!("period = \"previous_month\"\n{line}"),
    );
}

#[test]
fn serve_runs_jobs_in_order_one_scheduler_at_a_time() {
    let p = demo_project();
    schedules(p.path(), "*/5 * * * * *", "*/7 * * * * *");
    let before = history(p.path()).len();
    let mut first = Serve::start(p.path());
    first.expect("serving: lease epoch", Duration::from_secs(90));
    // A second scheduler waits while the first lives.
    let mut second = Serve::start(p.path());
    second.expect("waiting: the lease is held by", Duration::from_secs(90));
    // Let the first run a report, which waits for fresh extracts first.
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let h = history(p.path());
        if h[..h.len() - before]
            .iter()
            .any(|r| r.0 == "monthly_par" && r.2 == "succeeded")
        {
            break;
        }
        assert!(Instant::now() < until, "no report ran: {h:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !second.seen.iter().any(|l| l.contains("serving")),
        "the second ran nothing while the first lived: {:?}",
        second.seen
    );
    // Newest first: the first report of this serve comes after a succeeded extract of its
    // data. That extract may be the one made just before the scheduler started (it is fresh
    // for the period too), so the whole history is searched, not only this serve's runs.
    let h = history(p.path());
    let report_at = h[..h.len() - before]
        .iter()
        .rposition(|r| r.0 == "monthly_par")
        .unwrap();
    assert!(
        h[report_at..]
            .iter()
            .any(|r| r.0 == "dossier" && r.2 == "succeeded"),
        "the dossier extract ran before the report: {h:?}"
    );
    // And this serve runs extracts on their schedule, besides the report (the report may
    // come first: the catch-up runs it at start when the data is already fresh).
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let h = history(p.path());
        if h[..h.len() - before].iter().any(|r| r.0 == "dossier") {
            break;
        }
        assert!(Instant::now() < until, "no scheduled extract ran: {h:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Kill the first: the second takes over once the lease expires.
    let _ = first.child.kill();
    let _ = first.child.wait();
    second.expect("serving: lease epoch 1", Duration::from_secs(90));
    // And stops gracefully on SIGTERM, releasing the lease.
    second.signal("-TERM");
    second.expect("stopped", Duration::from_secs(60));
    let status = second.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn the_catch_up_policy_is_applied_on_start() {
    let p = demo_project();
    // Reports every 2 seconds, extracts never within the test.
    schedules(p.path(), "0 0 3 1 1 *", "*/2 * * * * *");
    set_option(p.path(), "monthly_par", "catch_up = \"all\"");
    set_option(p.path(), "monthly_investment", "catch_up = \"none\"");
    ok(run(
        p.path(),
        &["report", "monthly_par", "--period", "2021-10"],
    ));
    ok(run(
        p.path(),
        &["report", "monthly_investment", "--period", "2021-10"],
    ));
    // The scheduler is down across several fires.
    std::thread::sleep(Duration::from_secs(5));
    let mut s = Serve::start(p.path());
    let par = s.expect("catch-up monthly_par:", Duration::from_secs(90));
    let missed: usize = par.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(missed >= 2, "{par}");
    assert!(
        par.ends_with(&format!("policy All, running {missed}")),
        "{par}"
    );
    let inv = s.expect("catch-up monthly_investment:", Duration::from_secs(90));
    assert!(inv.ends_with("policy None, running 0"), "{inv}");
    s.signal("-INT");
    s.expect("stopped", Duration::from_secs(120));
}

#[test]
fn a_job_that_still_fails_after_its_retries_alerts_the_operators() {
    let p = demo_project();
    schedules(p.path(), "0 0 3 1 1 *", "*/2 * * * * *");
    set_option(p.path(), "monthly_par", "retries = 1");
    edit(
        p.path(),
        "sql/par/late_procedures.sql",
        "MAX(procedure_name) AS procedure_name",
        "MAX(procedure_nam) AS procedure_name",
    );
    let mut s = Serve::start(p.path());
    s.expect("serving", Duration::from_secs(90));
    let alerts = p.path().join("outbox/_alerts");
    let until = Instant::now() + Duration::from_secs(120);
    let text = loop {
        let found = std::fs::read_dir(&alerts).ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("it-ops@example.gov.vn.eml"))
                .find(|f| f.is_file())
        });
        if let Some(f) = found {
            break std::fs::read_to_string(f).unwrap();
        }
        assert!(Instant::now() < until, "no alert for the operators");
        std::thread::sleep(Duration::from_millis(300));
    };
    s.signal("-TERM");
    s.expect("stopped", Duration::from_secs(120));
    // The alert is quoted-printable or base64 text: decode it with Python's parser.
    let decoded = {
        std::fs::write(p.path().join("alert.eml"), &text).unwrap();
        let o = Command::new("python3")
            .arg("-c")
            .arg("import email, email.policy, sys; m = email.message_from_string(open(sys.argv[1]).read(), policy=email.policy.default); print(m['subject']); print(m.get_content())")
            .arg(p.path().join("alert.eml"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert!(decoded.contains("monthly_par"), "{decoded}");
    assert!(decoded.contains("thất bại sau 2 lần thử"), "{decoded}");
    assert!(decoded.contains("procedure_nam"), "the error: {decoded}");
    assert!(
        decoded.contains("Cuối nhật ký"),
        "the end of the log: {decoded}"
    );
    // The report's period: the month before the fire, in Hà Tĩnh.
    let prev = previous_month_label();
    assert!(decoded.contains(&format!("kỳ {prev}")), "{decoded}");
}

/// The alert files of the operators in the outbox.
fn alerts(project: &Path) -> usize {
    std::fs::read_dir(project.join("outbox/_alerts"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("it-ops@example.gov.vn.eml").is_file())
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_restarted_scheduler_does_not_tell_the_operators_again() {
    let p = demo_project();
    schedules(p.path(), "0 0 3 1 1 *", "*/2 * * * * *");
    set_option(p.path(), "monthly_par", "retries = 0");
    set_option(p.path(), "monthly_investment", "catch_up = \"none\"");
    edit(
        p.path(),
        "sql/par/late_procedures.sql",
        "MAX(procedure_name) AS procedure_name",
        "MAX(procedure_nam) AS procedure_name",
    );
    let mut first = Serve::start(p.path());
    let until = Instant::now() + Duration::from_secs(120);
    while alerts(p.path()) == 0 {
        assert!(Instant::now() < until, "no alert: {:?}", first.seen);
        std::thread::sleep(Duration::from_millis(200));
    }
    first.signal("-TERM");
    first.expect("stopped", Duration::from_secs(60));
    // The next scheduler fails the same period again, and again, and says nothing new.
    let mut second = Serve::start(p.path());
    second.expect("failed: monthly_par", Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(3));
    second.expect("failed: monthly_par", Duration::from_secs(60));
    assert_eq!(alerts(p.path()), 1, "told once: {:?}", second.seen);
    // Once the period succeeds, its mark is cleared: a later failure is news again.
    edit(
        p.path(),
        "sql/par/late_procedures.sql",
        "MAX(procedure_nam) AS procedure_name",
        "MAX(procedure_name) AS procedure_name",
    );
    second.expect(
        &format!("monthly_par {}: sent", previous_month_label()),
        Duration::from_secs(120),
    );
    second.signal("-TERM");
    second.expect("stopped", Duration::from_secs(60));
    let marks = std::fs::read_dir(p.path().join("warehouse/_alerts"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(marks, 0, "the mark is cleared after the success");
}
