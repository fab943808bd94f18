//! Personal data in malformed rows: every kind of misshapen CSV and NDJSON row, carrying
//! generated names, ID numbers, phones and addresses, is quarantined without any of them in
//! clear in the warehouse's bytes, the quarantine, stdout and stderr, the run history or the
//! operators' alert email.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::schedule::{at, SimClock};
use crate::serve::Serve;
use crate::util::*;

/// A dataset `name` with hashed (name, ID number) and dropped (phone, address) columns.
fn schema(name: &str) -> String {
    format!(
        r#"name = "{name}"
label = "Người nộp"
description = "A test dataset with personal data."
primary_key = ["code"]

[[columns]]
name = "code"
type = "Utf8"
nullable = false
label = "Mã"

[[columns]]
name = "applicant_name"
type = "Utf8"
nullable = true
label = "Họ tên"
personal = "hash"

[[columns]]
name = "applicant_id"
type = "Utf8"
nullable = true
label = "Số giấy tờ"
personal = "hash"

[[columns]]
name = "applicant_phone"
type = "Utf8"
nullable = true
label = "Điện thoại"
personal = "drop"

[[columns]]
name = "applicant_address"
type = "Utf8"
nullable = true
label = "Địa chỉ"
personal = "drop"

[[columns]]
name = "agency_name"
type = "Utf8"
nullable = true
label = "Cơ quan"

[[columns]]
name = "fee_vnd"
type = "Int64"
nullable = true
label = "Phí"
"#
    )
}

/// One generated person: name, ID number, phone, address (with a comma, as addresses have).
fn person(i: usize) -> [String; 4] {
    let family = [
        "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Phan", "Võ", "Đặng",
    ];
    let middle = ["Thị", "Văn", "Đức", "Ngọc", "Minh", "Hữu"];
    let given = [
        "Khánh Linh",
        "Quốc Bảo",
        "Thu Hằng",
        "Đình Phong",
        "Mai Anh",
    ];
    [
        format!(
            "{} {} {}",
            family[i % family.len()],
            middle[(i / 3) % middle.len()],
            given[(i / 7) % given.len()]
        ),
        format!("0384{:08}", 19_870_000 + i * 7919),
        format!("09{:08}", 12_345_000 + i * 104_729),
        format!("Số {} đường Nguyễn Du, Phường Bắc Hà {}", 10 + i, i),
    ]
}

/// The CSV export: good rows, then every misshapen kind, each with a person of its own.
fn csv(people: &[[String; 4]]) -> String {
    let mut out = String::from("Ma,HoTen,SoGiayTo,DienThoai,DiaChi,CoQuan,Phi\n");
    let row = |code: &str, p: &[String; 4]| {
        format!(
            "{code},{},{},{},\"{}\",Sở Tư pháp,1000\n",
            p[0], p[1], p[2], p[3]
        )
    };
    for (i, p) in people[..4].iter().enumerate() {
        out.push_str(&row(&format!("C{i}"), p));
    }
    let [n, id, phone, addr] = &people[4];
    // A field too many: the address's comma unquoted.
    out.push_str(&format!("C4,{n},{id},{phone},{addr},Sở Xây dựng,2000\n"));
    let [n, id, phone, _] = &people[5];
    // Fields too few: the row stops after the phone.
    out.push_str(&format!("C5,{n},{id},{phone}\n"));
    let [n, id, phone, addr] = &people[6];
    // A quote in the middle of a field: the field is not what its quotes say.
    out.push_str(&format!(
        "C6,{n},{id},{phone},Số \"{addr}\" x,Sở Y tế,3000\n"
    ));
    let [n, id, phone, addr] = &people[7];
    // A number column holding text: a value that cannot be typed.
    out.push_str(&format!(
        "C7,{n},{id},{phone},\"{addr}\",Sở Y tế,một nghìn đồng\n"
    ));
    out
}

/// The NDJSON export: good lines, then every misshapen kind.
fn ndjson(people: &[[String; 4]]) -> String {
    let line = |code: &str, p: &[String; 4]| {
        serde_json::json!({"Ma": code, "HoTen": p[0], "SoGiayTo": p[1], "DienThoai": p[2], "DiaChi": p[3], "CoQuan": "Sở Tư pháp", "Phi": 1000}).to_string()
    };
    let mut out = String::new();
    for (i, p) in people[8..12].iter().enumerate() {
        out.push_str(&line(&format!("J{i}"), p));
        out.push('\n');
    }
    // A line cut short: not JSON.
    let cut = line("J4", &people[12]);
    out.push_str(&cut[..cut.len() - 12]);
    out.push('\n');
    // A line that is JSON but not an object.
    let [n, id, phone, addr] = &people[13];
    out.push_str(&serde_json::json!(["J5", n, id, phone, addr]).to_string());
    out.push('\n');
    // A field of the wrong type: the fee as text.
    let [n, id, phone, addr] = &people[14];
    out.push_str(&serde_json::json!({"Ma": "J6", "HoTen": n, "SoGiayTo": id, "DienThoai": phone, "DiaChi": addr, "CoQuan": "Sở Y tế", "Phi": "một nghìn"}).to_string());
    out.push('\n');
    // A name that is an object, with the ID number inside.
    let [n, id, phone, addr] = &people[15];
    out.push_str(&serde_json::json!({"Ma": "J7", "HoTen": {"ten": n, "cccd": id}, "SoGiayTo": id, "DienThoai": phone, "DiaChi": addr, "CoQuan": "Sở Y tế", "Phi": 1}).to_string());
    out.push('\n');
    out
}

fn project(max_share: f64) -> (tempfile::TempDir, Vec<[String; 4]>) {
    let p = project_copy();
    // Only the two test datasets' jobs: the reports would run at the scheduler's start.
    for report in ["monthly_par", "monthly_investment"] {
        std::fs::remove_file(p.path().join(format!("pipelines/{report}.toml"))).unwrap();
    }
    let people: Vec<[String; 4]> = (0..16).map(person).collect();
    let columns = "[columns]\ncode = \"Ma\"\napplicant_name = \"HoTen\"\napplicant_id = \"SoGiayTo\"\napplicant_phone = \"DienThoai\"\napplicant_address = \"DiaChi\"\nagency_name = \"CoQuan\"\nfee_vnd = \"Phi\"\n";
    for (dataset, file, format) in [
        ("applicant_csv", "nguoi_nop.csv", "csv"),
        ("applicant_json", "nguoi_nop.ndjson", "ndjson"),
    ] {
        std::fs::write(
            p.path().join(format!("schemas/{dataset}.toml")),
            schema(dataset),
        )
        .unwrap();
        std::fs::write(
            p.path().join(format!("pipelines/{dataset}.toml")),
            format!("kind = \"extract\"\ndataset = \"{dataset}\"\nconnection = \"exports\"\npath = \"{file}\"\nformat = \"{format}\"\nmode = \"merge\"\nquarantine_max_share = {max_share}\nschedule = \"0 0 3 * * *\"\n\n{columns}"),
        )
        .unwrap();
    }
    std::fs::create_dir_all(p.path().join("data")).unwrap();
    std::fs::write(p.path().join("data/nguoi_nop.csv"), csv(&people)).unwrap();
    std::fs::write(p.path().join("data/nguoi_nop.ndjson"), ndjson(&people)).unwrap();
    (p, people)
}

/// Every personal value of the people from index 4 on (those in misshapen rows), and each
/// address's two halves.
fn secrets(people: &[[String; 4]]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in people.iter().enumerate() {
        if (4..8).contains(&i) || i >= 12 {
            out.extend(p.iter().cloned());
            let (a, b) = p[3].split_once(", ").unwrap();
            out.extend([a.to_string(), b.to_string()]);
        }
    }
    out
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{s:?} in clear in {what}:\n{text}"
        );
    }
}

/// Every file below `dir`, as (path, text).
fn all_text(dir: &Path) -> Vec<(String, String)> {
    files_under(dir)
        .into_iter()
        .map(|(p, b)| {
            (
                p.display().to_string(),
                String::from_utf8_lossy(&b).into_owned(),
            )
        })
        .collect()
}

/// Every run's `runs show` text.
fn history(project: &Path) -> String {
    let mut out = ok(run(project, &["runs", "list", "--limit", "1000"]));
    for r in run_lines(project) {
        out.push_str(&ok(run(project, &["runs", "show", &r.id])));
    }
    out
}

#[test]
fn no_kind_of_malformed_row_shows_personal_data_anywhere() {
    let (p, people) = project(0.9);
    let secrets = secrets(&people);
    let o = run(p.path(), &["extract", "applicant_csv", "applicant_json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("applicant_csv: 8 read, 4 written, 4 quarantined"),
        "{out}"
    );
    // A name given as an object is stored as its JSON text, hashed: not malformed.
    assert!(
        out.contains("applicant_json: 8 read, 5 written, 3 quarantined"),
        "{out}"
    );
    assert_clean("stdout", &out, &secrets);
    assert_clean("stderr", &stderr(&o), &secrets);

    let files = all_text(&p.path().join("warehouse"));
    for (path, text) in &files {
        assert_clean(path, text, &secrets);
    }
    // The files may be compressed: the quarantine read back, too. Each row is there, with
    // its position and reasons, and its personal cells hashed.
    let q = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ctx = crate::extract::warehouse(p.path()).await;
        let b = ctx
            .sql("SELECT position, row_json, reasons FROM quarantine ORDER BY position")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string()
    });
    assert_clean("the quarantine", &q, &secrets);
    for at in [
        "nguoi_nop.csv:6",
        "nguoi_nop.csv:7",
        "nguoi_nop.csv:8",
        "nguoi_nop.csv:9",
        "nguoi_nop.ndjson:5",
        "nguoi_nop.ndjson:6",
        "nguoi_nop.ndjson:7",
    ] {
        assert!(q.contains(at), "{at} is quarantined: {q}");
    }
    assert_clean("the run history", &history(p.path()), &secrets);
}

#[test]
fn a_run_failed_by_malformed_rows_tells_the_operators_no_personal_data() {
    // Half the rows are malformed, above the 5% allowed: the run fails, under the scheduler,
    // which emails the operators.
    let (p, people) = project(0.05);
    let secrets = secrets(&people);
    let clock = SimClock::new(p.path(), at("2026-12-03T02:59:59+07:00"));
    let mut serve = Serve::start_with(p.path(), &[clock.var()]);
    serve.expect("serving: lease epoch", Duration::from_secs(90));
    clock.set(at("2026-12-03T03:00:00+07:00"));
    serve.expect("failed: applicant_json", Duration::from_secs(120));
    serve.signal("-TERM");
    serve.expect("stopped", Duration::from_secs(60));
    serve.drain();
    assert_clean("the daemon's output", &serve.seen.join("\n"), &secrets);

    // Each failed extract's alert, decoded as a mail client shows it.
    let alerts = all_text(&p.path().join("outbox/_alerts"));
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    for (path, _) in &alerts {
        let o = Command::new("python3")
            .arg("-c")
            .arg("import email, email.policy, sys; m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.default); print(m['subject']); print(m.get_content())")
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        assert!(text.contains("quarantine_max_share"), "{text}");
        assert_clean(path, &text, &secrets);
    }
    let h = history(p.path());
    assert!(h.matches("failed").count() >= 2, "{h}");
    assert_clean("the run history", &h, &secrets);
    let files = all_text(&p.path().join("warehouse"));
    for (path, text) in &files {
        assert_clean(path, text, &secrets);
    }
}
