//! Delivery: both demo reports through a real SMTP server (aiosmtpd), read back with Python's
//! MIME parser; the workbook against the CSVs and the official form's identity; exactly once
//! across reruns and concurrent senders; refusals retried, recorded and reported to the
//! operators; the rendered HTML opened in headless Chromium for a screenshot.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use calamine::{Data, Reader};

use crate::report::demo_project;
use crate::util::*;

pub(crate) struct Smtp {
    child: Child,
    pub(crate) port: u16,
    pub(crate) mbox: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn smtp(mbox: &Path, extra: &[&str]) -> Smtp {
    smtp_at(free_port(), mbox, extra)
}

/// An SMTP server on `port` storing into `mbox` (which may already hold messages).
pub(crate) fn smtp_at(port: u16, mbox: &Path, extra: &[&str]) -> Smtp {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/fixtures/smtp_server.py"))
        .arg(port.to_string())
        .arg(mbox)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with aiosmtpd (scripts/test.sh installs it)");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "READY", "the SMTP server did not start");
    Smtp {
        child,
        port,
        mbox: mbox.to_path_buf(),
    }
}

/// Points the project's mail at `port` over SMTP without authentication.
pub(crate) fn use_smtp(project: &Path, port: u16) {
    let p = project.join("parstat.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("username") || line.starts_with("password") {
            continue;
        }
        if line.starts_with("transport") {
            out.push_str("transport = \"smtp\"\n");
        } else if line.starts_with("port") {
            out.push_str(&format!("port = {port}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&p, out).unwrap();
}

pub(crate) fn messages(mbox: &Path, out: Option<&Path>) -> Vec<serde_json::Value> {
    if !mbox.exists() {
        return vec![];
    }
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("tests/fixtures/read_mbox.py"))
        .arg(mbox);
    if let Some(o) = out {
        cmd.arg(o);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn count_to(msgs: &[serde_json::Value], to: &str, subject_part: &str) -> usize {
    msgs.iter()
        .filter(|m| {
            m["to"].as_str().unwrap_or_default().contains(to)
                && m["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(subject_part)
        })
        .count()
}

fn cell_f64(d: &Data) -> Option<f64> {
    match d {
        Data::Float(f) => Some(*f),
        Data::Int(i) => Some(*i as f64),
        _ => None,
    }
}

#[test]
fn both_demo_reports_arrive_through_a_real_smtp_server() {
    let p = demo_project();
    let server = smtp(&p.path().join("mail.mbox"), &[]);
    use_smtp(p.path(), server.port);
    let par = ok(run(
        p.path(),
        &["report", "monthly_par", "--period", "2021-10"],
    ));
    assert!(par.contains("chu-tich@example.gov.vn: sent"), "{par}");
    ok(run(
        p.path(),
        &["report", "monthly_investment", "--period", "2021-10"],
    ));

    let saved = p.path().join("attachments");
    let msgs = messages(&server.mbox, Some(&saved));
    assert_eq!(msgs.len(), 4, "two reports, two recipients each");
    let par_subject = "Báo cáo tình hình giải quyết TTHC tháng 10/2021";
    let inv_subject = "Báo cáo tình hình thu hút đầu tư tháng 10/2021";
    for (i, m) in msgs.iter().enumerate() {
        let subject = m["subject"].as_str().unwrap();
        assert!(
            subject == par_subject || subject == inv_subject,
            "{subject}"
        );
        // Python's parser reads the sender's name whole (an encoded word cut inside
        // "thông" showed as "thôn g").
        assert_eq!(
            m["from"].as_str().unwrap(),
            "\"Trung tâm Giám sát, điều hành thông minh\" <ioc@example.gov.vn>"
        );
        let text = m["text"].as_str().expect("a plain-text alternative");
        let html = m["html"].as_str().expect("an HTML alternative");
        assert!(
            html.contains("<table") && !html.contains("<script"),
            "{html}"
        );
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external images"
        );
        let names: Vec<&str> = m["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        let inline = m["inline"].as_array().unwrap();
        for img in inline {
            let cid = img["cid"]
                .as_str()
                .unwrap()
                .trim_matches(['<', '>'])
                .to_string();
            assert!(
                html.contains(&format!("cid:{cid}")),
                "{cid} is shown in the HTML"
            );
        }
        if subject == par_subject {
            assert!(text.contains("Hồ sơ tiếp nhận giải quyết"), "{text}");
            assert_eq!(inline.len(), 2, "trend and agencies charts");
            assert!(
                names.contains(&"Báo cáo giải quyết TTHC tháng 10-2021.xlsx"),
                "{names:?}"
            );
            assert!(names.contains(&"dossier_monthly_2021-10.csv"), "{names:?}");
            check_par_workbook(&saved.join(i.to_string()));
        } else {
            assert!(text.contains("1.402 dự án"), "{text}");
            assert!(text.contains("417.021 tỷ đồng"), "{text}");
            assert!(html.contains("417.021 tỷ đồng"));
            assert!(
                names.contains(&"Báo cáo thu hút đầu tư tháng 10-2021.xlsx"),
                "{names:?}"
            );
        }
    }
    assert_eq!(count_to(&msgs, "chu-tich@example.gov.vn", par_subject), 1);
    assert_eq!(count_to(&msgs, "van-phong@example.gov.vn", par_subject), 1);
}

/// The workbook holds the same numbers as the CSV, and every row of the official form
/// satisfies received = resolved + pending.
fn check_par_workbook(dir: &Path) {
    let mut wb: calamine::Xlsx<_> =
        calamine::open_workbook(dir.join("Báo cáo giải quyết TTHC tháng 10-2021.xlsx")).unwrap();
    let sheet = wb.worksheet_range("dossier_monthly").unwrap();
    let mut csv = csv::Reader::from_path(dir.join("dossier_monthly_2021-10.csv")).unwrap();
    let headers: Vec<String> = csv
        .headers()
        .unwrap()
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    let rows: Vec<csv::StringRecord> = csv.records().map(|r| r.unwrap()).collect();
    assert_eq!(sheet.height(), rows.len() + 1, "one sheet row per CSV row");
    let mut compared = 0;
    for (r, rec) in rows.iter().enumerate() {
        for (c, h) in headers.iter().enumerate() {
            let cell = sheet.get((r + 1, c)).unwrap();
            match cell {
                Data::String(s) => assert_eq!(s, &rec[c], "{h} row {r}"),
                Data::Empty => assert_eq!(&rec[c], "", "{h} row {r}"),
                _ => {
                    let want: f64 = rec[c]
                        .parse()
                        .unwrap_or_else(|_| panic!("{h} row {r}: {:?}", &rec[c]));
                    let got = cell_f64(cell).unwrap_or_else(|| panic!("{h} row {r}: {cell:?}"));
                    assert!(
                        (want - got).abs() < 1e-9 * want.abs().max(1.0),
                        "{h} row {r}: {want} vs {got}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 100, "numbers compared: {compared}");
    let form = wb.worksheet_range("Bieu II.06a").unwrap();
    let mut data_rows = 0;
    let mut total = None;
    for row in form.rows().skip(8) {
        let (Some(a), Some(b), Some(c)) = (
            row.get(2).and_then(cell_f64),
            row.get(6).and_then(cell_f64),
            row.get(10).and_then(cell_f64),
        ) else {
            continue;
        };
        assert_eq!(
            a,
            b + c,
            "received = resolved + pending in {:?}",
            row.get(1)
        );
        if total.is_none() {
            total = Some(a);
        }
        data_rows += 1;
    }
    assert!(data_rows > 10, "the form lists the units: {data_rows}");
    let province = rows.iter().find(|r| &r[0] == "province").map(|r| {
        r[headers.iter().position(|h| h == "to_process").unwrap()]
            .parse::<f64>()
            .unwrap()
    });
    assert_eq!(total, province, "the form's total row is the province");
}

#[test]
fn reruns_and_concurrent_senders_deliver_once() {
    let p = demo_project();
    let server = smtp(&p.path().join("mail.mbox"), &[]);
    use_smtp(p.path(), server.port);
    ok(run(
        p.path(),
        &["report", "monthly_investment", "--period", "2021-10"],
    ));
    let again = ok(run(
        p.path(),
        &["report", "monthly_investment", "--period", "2021-10"],
    ));
    assert!(
        again.contains("chu-tich@example.gov.vn: already delivered"),
        "{again}"
    );
    assert_eq!(messages(&server.mbox, None).len(), 2);

    // Two senders at once for a report nobody has received yet.
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_parstat"))
            .arg("--project")
            .arg(p.path())
            .args(["report", "monthly_par", "--period", "2021-10"])
            .env("PARSTAT_PII_KEY", "test-key-0123456789abcdef")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    let (sa, sb) = (a.wait().unwrap(), b.wait().unwrap());
    // Each waits for the other's claims to settle: both end with every recipient sent once.
    assert!(sa.success() && sb.success(), "{sa:?} {sb:?}");
    let msgs = messages(&server.mbox, None);
    let subject = "giải quyết TTHC tháng 10/2021";
    assert_eq!(
        count_to(&msgs, "chu-tich@example.gov.vn", subject),
        1,
        "one each"
    );
    assert_eq!(
        count_to(&msgs, "van-phong@example.gov.vn", subject),
        1,
        "one each"
    );

    // --resend sends again, on purpose, and says so.
    let re = ok(run(
        p.path(),
        &["report", "monthly_par", "--period", "2021-10", "--resend"],
    ));
    assert!(re.contains("chu-tich@example.gov.vn: sent"), "{re}");
    let msgs = messages(&server.mbox, None);
    assert_eq!(count_to(&msgs, "chu-tich@example.gov.vn", subject), 2);
    let ids: std::collections::BTreeSet<&str> = msgs
        .iter()
        .filter(|m| {
            m["to"].as_str().unwrap().contains("chu-tich")
                && m["subject"].as_str().unwrap().contains(subject)
        })
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "a resend keeps the Message-ID: {ids:?}");
}

#[test]
fn refusals_are_retried_recorded_and_reported_to_operators() {
    let p = demo_project();
    let mbox = p.path().join("mail.mbox");
    {
        // The chairman's mailbox refuses permanently.
        let server = smtp(&mbox, &["--refuse-to", "chu-tich@example.gov.vn"]);
        use_smtp(p.path(), server.port);
        let o = run(
            p.path(),
            &["report", "monthly_investment", "--period", "2021-10"],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("chu-tich@example.gov.vn: refused"),
            "{}",
            stderr(&o)
        );
        let msgs = messages(&mbox, None);
        assert_eq!(count_to(&msgs, "so-tai-chinh@example.gov.vn", "đầu tư"), 1);
        assert_eq!(count_to(&msgs, "chu-tich@example.gov.vn", "đầu tư"), 0);
        let alert = msgs
            .iter()
            .find(|m| m["to"].as_str().unwrap().contains("it-ops@example.gov.vn"))
            .expect("operators are told");
        assert!(alert["subject"].as_str().unwrap().contains("thất bại"));
        assert!(alert["text"]
            .as_str()
            .unwrap()
            .contains("chu-tich@example.gov.vn"));
    }
    {
        // The mailbox works again, after two temporary refusals: the rerun sends the missing
        // message once, and nothing twice.
        let server = smtp(&mbox, &["--refuse-first", "2"]);
        use_smtp(p.path(), server.port);
        let out = ok(run(
            p.path(),
            &["report", "monthly_investment", "--period", "2021-10"],
        ));
        assert!(out.contains("chu-tich@example.gov.vn: sent"), "{out}");
        assert!(
            out.contains("so-tai-chinh@example.gov.vn: already delivered"),
            "{out}"
        );
        let msgs = messages(&mbox, None);
        assert_eq!(count_to(&msgs, "chu-tich@example.gov.vn", "đầu tư"), 1);
        assert_eq!(count_to(&msgs, "so-tai-chinh@example.gov.vn", "đầu tư"), 1);
    }
}

#[test]
fn the_outbox_and_the_preview_and_a_screenshot_of_the_email() {
    let p = demo_project();
    // The default transport: standard .eml files in the outbox.
    let out = ok(run(
        p.path(),
        &["report", "monthly_par", "--period", "2021-10"],
    ));
    let eml = p
        .path()
        .join("outbox/monthly_par/2021-10/chu-tich@example.gov.vn.eml");
    assert!(out.contains(eml.to_str().unwrap()), "{out}");
    let text = std::fs::read_to_string(&eml).unwrap();
    assert!(text.contains("Message-ID: <"), "{text}");
    assert!(text.contains("Content-Type: multipart/mixed"));
    // A preview writes the email and its parts and sends nothing.
    let dir = p.path().join("preview");
    preview(p.path(), "monthly_par", "2021-11", &dir);
    for f in [
        "email.eml",
        "email.html",
        "email.txt",
        "chart_trend.png",
        "chart_agencies.png",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert!(
        !p.path().join("outbox/monthly_par/2021-11").exists(),
        "nothing sent"
    );
    let html = std::fs::read_to_string(dir.join("email.html")).unwrap();
    assert!(
        html.contains("chart_trend.png"),
        "the preview shows the charts in a browser"
    );
    // minijinja escapes `/` in HTML as `&#x2f;`.
    assert!(html.contains("tháng 11&#x2f;2021"), "{html}");

    // Headless Chromium renders it; the screenshot is kept for CI artifacts.
    let shots = repo().join("artifacts/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("monthly_par.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=800,2400")
        .arg(format!("file://{}", dir.join("email.html").display()))
        .output()
        .expect("chromium (scripts/test.sh installs Debian's package)");
    assert!(o.status.success(), "{}", stderr(&o));
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(
        png.len() > 20_000,
        "a rendered page, not a blank one: {} bytes",
        png.len()
    );
}

/// The claim files of the delivery ledger, anywhere under the warehouse.
pub(crate) fn claims(project: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("claim-"))
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&project.join("warehouse/_ledger"), &mut out);
    out
}

#[test]
fn a_recipient_from_the_environment_is_checked_before_anything_runs_then_delivered() {
    let p = demo_project();
    let server = smtp(&p.path().join("mail.mbox"), &[]);
    use_smtp(p.path(), server.port);
    let text = edit(
        p.path(),
        "pipelines/monthly_investment.toml",
        "cc = [\"so-tai-chinh@example.gov.vn\"]",
        "cc = [\"${PARSTAT_CC}\"]",
    );
    let report = ["report", "monthly_investment", "--period", "2021-10"];
    // Unset: `check` names the variable where it is written, and the report runs nothing.
    let (line, col) = pos(&text, "${PARSTAT_CC}");
    for args in [&["check"][..], &report[..]] {
        let o = run(p.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stdout(&o));
        let want = format!(
            "pipelines/monthly_investment.toml:{line}:{col}: error: environment variable `PARSTAT_CC` is not set"
        );
        assert!(stderr(&o).contains(&want), "{args:?}: {}", stderr(&o));
    }
    // Set to something that is no address: refused with the variable named.
    let o = run_with(
        p.path(),
        &["check"],
        &[("PARSTAT_CC", "so-tai-chinh@@example")],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o)
            .contains("`so-tai-chinh@@example` (from `${PARSTAT_CC}`) is not an email address"),
        "{}",
        stderr(&o)
    );
    assert!(claims(p.path()).is_empty(), "{:?}", claims(p.path()));
    assert_eq!(messages(&server.mbox, None).len(), 0);
    // Set: both recipients get the report once.
    let env = [("PARSTAT_CC", "so-tai-chinh@example.gov.vn")];
    let out = ok(run_with(p.path(), &report, &env));
    assert!(out.contains("so-tai-chinh@example.gov.vn: sent"), "{out}");
    let msgs = messages(&server.mbox, None);
    let subject = "thu hút đầu tư";
    assert_eq!(count_to(&msgs, "chu-tich@example.gov.vn", subject), 1);
    assert_eq!(count_to(&msgs, "so-tai-chinh@example.gov.vn", subject), 1);
}

/// A message that cannot be built (no configuration can make one now that `check` parses
/// every address as the mailer does, so the library is called directly) fails the delivery
/// before any recipient is claimed: no later run can take a claim for a delivery.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_cannot_be_built_claims_nobody() {
    let p = project_copy();
    let project = parstat::config::Project::load(p.path()).unwrap();
    let email = parstat::render::Email {
        subject: "Báo cáo".into(),
        html: "<p>Báo cáo</p>".into(),
        text: "Báo cáo".into(),
        inline: vec![],
        attachments: vec![],
    };
    let recipients = vec![
        "chu-tich@example.gov.vn".to_string(),
        "so-tai-chinh@@example".to_string(),
    ];
    let r = parstat::deliver::deliver(
        &project,
        "monthly_investment",
        "2021-10",
        &recipients,
        &email,
        &parstat::deliver::DeliverOptions {
            resend: false,
            guard: Default::default(),
        },
    )
    .await;
    let err = r
        .expect_err("an unbuildable message fails the delivery")
        .to_string();
    assert!(
        err.contains("so-tai-chinh@@example") && err.contains("nothing was sent or claimed"),
        "{err}"
    );
    assert!(claims(p.path()).is_empty(), "{:?}", claims(p.path()));
    let outbox = p.path().join("outbox");
    let sent = std::fs::read_dir(&outbox).map(|d| d.count()).unwrap_or(0);
    assert_eq!(sent, 0, "nothing in {}", outbox.display());
}

#[test]
fn a_sender_killed_between_its_claim_and_the_send_is_finished_by_the_next_run() {
    let p = demo_project();
    // A server that accepts and never answers: the sender claims, then waits in the send.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    use_smtp(p.path(), silent.local_addr().unwrap().port());
    let mut sender = Command::new(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(p.path())
        .args(["report", "monthly_investment", "--period", "2021-10"])
        .env("PARSTAT_PII_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while claims(p.path()).is_empty() && started.elapsed().as_secs() < 120 {
        assert!(sender.try_wait().unwrap().is_none(), "the sender ended");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(claims(p.path()).len(), 1, "one claim, then the send hangs");
    sender.kill().unwrap();
    sender.wait().unwrap();
    drop(silent);
    // The claim has no outcome and its sender is gone: the next run sends, well within the
    // 15 minutes a claim of a sender on another host would be waited for.
    let server = smtp(&p.path().join("mail.mbox"), &[]);
    use_smtp(p.path(), server.port);
    let out = ok(run(
        p.path(),
        &["report", "monthly_investment", "--period", "2021-10"],
    ));
    assert!(out.contains("chu-tich@example.gov.vn: sent"), "{out}");
    let msgs = messages(&server.mbox, None);
    let subject = "thu hút đầu tư";
    assert_eq!(count_to(&msgs, "chu-tich@example.gov.vn", subject), 1);
    assert_eq!(count_to(&msgs, "so-tai-chinh@example.gov.vn", subject), 1);
}
