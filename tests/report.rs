//! `parstat report`: the contract's monthly statistics from a hand-made fixture whose every
//! expected value was worked out by hand below, under both period rules; publication and the
//! previous-period values; the publish checks; and the province's published facts on the
//! demo data.

use std::collections::HashMap;
use std::path::Path;

use crate::util::*;

type Row = HashMap<String, String>;

fn read_csv(path: &Path) -> Vec<Row> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn group<'a>(rows: &'a [Row], kind: &str, code: &str) -> &'a Row {
    rows.iter()
        .find(|r| r["group_kind"] == kind && r["group_code"] == code)
        .unwrap_or_else(|| panic!("no row {kind}/{code} in {rows:#?}"))
}

fn int(r: &Row, col: &str) -> i64 {
    r.get(col)
        .unwrap_or_else(|| panic!("no column {col}"))
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {:?} is not an integer", r[col]))
}

fn num(r: &Row, col: &str) -> f64 {
    r.get(col)
        .unwrap_or_else(|| panic!("no column {col}"))
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {:?} is not a number", r[col]))
}

fn assert_counts(r: &Row, expected: &[(&str, i64)]) {
    for (col, v) in expected {
        assert_eq!(
            int(r, col),
            *v,
            "{col} of {}/{}",
            r["group_kind"],
            r["group_code"]
        );
    }
}

fn assert_rates(r: &Row, expected: &[(&str, f64)]) {
    for (col, v) in expected {
        let got = num(r, col);
        assert!((got - v).abs() < 1e-9, "{col}: {got} != {v}");
    }
}

// ---------------------------------------------------------------------------------------
// The fixture: two agencies, 20 dossiers around October 2026, local times as the national
// portal writes them (yyyyMMddHHmmss, no offset).

const A: (&str, &str, &str, Option<&str>) = ("000.00.04.H42", "Sở Tư pháp", "TINH", None);
const B: (&str, &str, &str, Option<&str>) =
    ("000.99001.H42", "UBND xã Thử Nghiệm", "XA", Some("99001"));

struct D {
    code: &'static str,
    agency: (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    ),
    status: u8,
    channel: u8,
    received: &'static str,
    due: Option<&'static str>,
    finished: Option<&'static str>,
    fee: i64,
    paid_online: u8,
    digitized: u8,
}

#[allow(clippy::too_many_arguments)]
const fn d(
    code: &'static str,
    agency: (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    ),
    status: u8,
    channel: u8,
    received: &'static str,
    due: Option<&'static str>,
    finished: Option<&'static str>,
) -> D {
    D {
        code,
        agency,
        status,
        channel,
        received,
        due,
        finished,
        fee: 0,
        paid_online: 0,
        digitized: 0,
    }
}

fn fixture() -> Vec<D> {
    vec![
        // Carried over into October, resolved early (3 Oct < due 5 Oct).
        d(
            "D01",
            A,
            10,
            1,
            "20260920090000",
            Some("20261005170000"),
            Some("20261003100000"),
        ),
        // Received in the last second of September; resolved on its due day.
        d(
            "D02",
            A,
            9,
            2,
            "20260930235959",
            Some("20261010170000"),
            Some("20261010080000"),
        ),
        // Received at local midnight of 1 October (30 Sep in UTC); resolved a day late; fee paid online.
        D {
            fee: 50_000,
            paid_online: 1,
            ..d(
                "D03",
                A,
                9,
                2,
                "20261001000000",
                Some("20261008170000"),
                Some("20261009090000"),
            )
        },
        // No due date: resolved counts as on time; fee not paid online.
        D {
            fee: 100_000,
            ..d(
                "D04",
                A,
                10,
                1,
                "20261002080000",
                None,
                Some("20261020100000"),
            )
        },
        // Withdrawn by the applicant.
        d(
            "D05",
            A,
            7,
            3,
            "20261005080000",
            Some("20261025170000"),
            Some("20261006090000"),
        ),
        // Processing, due before the end of October: pending overdue.
        d(
            "D06",
            A,
            4,
            1,
            "20261010080000",
            Some("20261030170000"),
            None,
        ),
        // Supplement requested, due in November: pending within; digitized.
        D {
            digitized: 1,
            ..d(
                "D07",
                A,
                5,
                2,
                "20261012080000",
                Some("20261105170000"),
                None,
            )
        },
        // Stopped (status 8), no due date: pending, within.
        d("D08", A, 8, 1, "20261015080000", None, None),
        // Registered only (1) and not accepted (3): never counted.
        d("D09", A, 1, 2, "20261020080000", None, None),
        d("D10", A, 3, 2, "20261021080000", None, None),
        // Resolved (late) on 15 September: before October, inside decree09's October.
        d(
            "D11",
            A,
            9,
            1,
            "20260810080000",
            Some("20260820170000"),
            Some("20260915100000"),
        ),
        // Received in August, still processing, long overdue.
        d(
            "D12",
            A,
            4,
            1,
            "20260815080000",
            Some("20260901170000"),
            None,
        ),
        // Received 23:30 on 31 October local: October.
        d(
            "D13",
            A,
            2,
            2,
            "20261031233000",
            Some("20261110170000"),
            None,
        ),
        // Received 00:30 on 1 November local (still 31 October in UTC): November.
        d(
            "D14",
            A,
            2,
            2,
            "20261101003000",
            Some("20261110170000"),
            None,
        ),
        // Agency B: finished 23:50 on 31 October local, three days after its due day: late.
        D {
            fee: 20_000,
            paid_online: 2,
            ..d(
                "D15",
                B,
                10,
                2,
                "20261025100000",
                Some("20261028170000"),
                Some("20261031235000"),
            )
        },
        // Finished 00:10 on 2 October local (1 October in UTC) on its due day 2 October: on
        // time, although the UTC dates differ.
        d(
            "D16",
            B,
            9,
            1,
            "20260928080000",
            Some("20261002170000"),
            Some("20261002001000"),
        ),
        // Received a minute before decree09's October ends; resolved early on 16 October.
        d(
            "D17",
            B,
            9,
            1,
            "20261014235900",
            Some("20261020170000"),
            Some("20261016090000"),
        ),
        // Received at 00:00 on 15 October: calendar October only; pending overdue on 31 Oct.
        d(
            "D18",
            B,
            4,
            2,
            "20261015000000",
            Some("20261025170000"),
            None,
        ),
        // Withdrawn at 23:59 on 30 September: decree09's October only.
        d(
            "D19",
            A,
            7,
            1,
            "20260901080000",
            Some("20260910170000"),
            Some("20260930235900"),
        ),
        // Finished exactly at the end of October (00:00 on 1 November): still pending then.
        d(
            "D20",
            A,
            10,
            1,
            "20260916080000",
            Some("20260925170000"),
            Some("20261101000000"),
        ),
    ]
}

fn sync_record(x: &D) -> serde_json::Value {
    let (code, name, level, area) = x.agency;
    let fees: Vec<serde_json::Value> = if x.fee > 0 {
        vec![serde_json::json!({"TenPhiLePhi": "Lệ phí", "Gia": x.fee})]
    } else {
        vec![]
    };
    let supplements: Vec<serde_json::Value> = if x.status == 5 {
        vec![serde_json::json!({"NgayYeuCau": "20261013090000", "NgayBoSung": null})]
    } else {
        vec![]
    };
    serde_json::json!({
        "MaHoSo": format!("{code}-261001-{}", x.code),
        "MaTTHC": "1.000001.000.00.00.H42",
        "TenTTHC": "Chứng thực bản sao từ bản chính",
        "MaLinhVuc": "CT",
        "TenLinhVuc": "Chứng thực",
        "MaDonViXuLy": code,
        "DonViXuLy": name,
        "CapXuLy": level,
        "MaDiaBan": area,
        "MucDo": 3,
        "KenhThucHien": x.channel,
        "LoaiDoiTuong": 1,
        "ChuHoSo": "Nguyễn Thị Thử",
        "SoGiayToChuHoSo": "042190000001",
        "SoDienThoai": "0912000000",
        "DiaChi": "Thôn Một, xã Thử Nghiệm",
        "TrangThaiHoSo": x.status,
        "NgayNopHoSo": x.received,
        "NgayTiepNhan": x.received,
        "NgayHenTra": x.due,
        "NgayKetThucXuLy": x.finished,
        "NgayTra": null,
        "DanhSachHoSoBoSung": supplements,
        "DanhSachLePhi": fees,
        "DuocThanhToanTrucTuyen": x.paid_online,
        "HoSoCoThanhPhanSoHoa": x.digitized,
        "TaiKhoanDuocXacThucVoiVNeID": 0,
        "NgayCapNhat": "20261102000000",
    })
}

fn dossier_code(x: &str, agency: &str) -> String {
    format!("{agency}-261001-{x}")
}

pub fn write_fixture(project: &Path) {
    let dir = project.join("data/motcua");
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = fixture()
        .iter()
        .map(|x| sync_record(x).to_string())
        .collect();
    std::fs::write(dir.join("hoso_fixture.ndjson"), lines.join("\n") + "\n").unwrap();
    // Votes: 1 Oct 00:01 and 3 Oct and 10 Oct are October (both rules); 20 Sep is decree09's
    // October only; 1 Nov 00:05 local is November.
    let votes = [
        ("D01", A.0, "03/10/2026 11:00:00", "Rất hài lòng"),
        ("D02", A.0, "01/10/2026 00:01:00", "Không hài lòng"),
        ("D03", A.0, "10/10/2026 09:00:00", "Bình thường"),
        ("D11", A.0, "20/09/2026 10:00:00", "Hài lòng"),
        ("D15", B.0, "01/11/2026 00:05:00", "Hài lòng"),
    ];
    let mut csv = String::from("MaHoSo,ThoiGianDanhGia,MucDoHaiLong\n");
    for (x, agency, at, level) in votes {
        csv.push_str(&format!("{},{at},{level}\n", dossier_code(x, agency)));
    }
    std::fs::write(dir.join("danh_gia_hai_long.csv"), csv).unwrap();
}

/// The demo province's source files until December 2021 (3,000 dossiers), in `project`.
pub fn demo_data(project: &Path) {
    ok(run(
        project,
        &[
            "demo",
            "--data-only",
            "--until",
            "2021-12",
            "--dossiers",
            "3000",
        ],
    ));
}

/// The demo province until December 2021 (3,000 dossiers), extracted.
pub fn demo_project() -> tempfile::TempDir {
    let p = project_copy();
    demo_data(p.path());
    ok(run(p.path(), &["extract", "--all"]));
    p
}

fn fixture_project() -> tempfile::TempDir {
    let p = project_copy();
    write_fixture(p.path());
    ok(run(p.path(), &["extract", "dossier", "satisfaction_vote"]));
    p
}

#[test]
fn the_fixture_matches_the_hand_worked_values_in_calendar_months() {
    let p = fixture_project();
    let out = p.path().join("preview");
    let text = preview(p.path(), "monthly_par", "2026-10", &out);
    assert!(
        text.contains("Từ ngày 01/10/2026 đến ngày 31/10/2026"),
        "{text}"
    );
    let rows = read_csv(&out.join("dossier_monthly.csv"));
    assert!(out.join("dossier_monthly.parquet").is_file());
    // The footer states the dossiers' watermark (every fixture dossier was last changed at
    // 00:00 on 2 November, local time), read from the table version the report computed.
    let html = std::fs::read_to_string(out.join("email.html")).unwrap();
    assert!(
        html.contains("Dữ liệu <b>dossier</b> cập nhật đến 00:00 02&#x2f;11&#x2f;2026"),
        "{}",
        &html[html.find("Dữ liệu").unwrap_or(0)..]
    );

    // Province, October 2026 [01/10 00:00, 01/11 00:00) local:
    //   carried over: D01 D02 D12 D16 D20 = 5
    //   received: D03 D04 D05 D06 D07 D08 D13 D15 D17 D18 = 10
    //     in person D04 D06 D08 D17 = 4, online D03 D07 D13 D15 D18 = 5, postal D05 = 1
    //   resolved: D01 D02 D03 D04 D15 D16 D17 = 7
    //     early D01 D17 = 2, on time D02 D04(no due) D16(same local day) = 3, late D03 D15 = 2
    //   withdrawn: D05 = 1
    //   pending: D06 D07 D08 D12 D13 D18 D20 = 7; overdue D06 D12 D18 D20 = 4, within 3
    let province = group(&rows, "province", "province");
    assert_counts(
        province,
        &[
            ("carried_over", 5),
            ("received", 10),
            ("received_in_person", 4),
            ("received_online", 5),
            ("received_postal", 1),
            ("to_process", 15),
            ("resolved", 7),
            ("resolved_early", 2),
            ("resolved_on_time", 3),
            ("resolved_late", 2),
            ("withdrawn", 1),
            ("pending", 7),
            ("pending_overdue", 4),
            ("pending_within", 3),
            ("votes", 3),
        ],
    );
    assert_rates(
        province,
        &[
            ("on_time_rate", 5.0 / 7.0 * 100.0),
            ("overdue_rate", 6.0 / 15.0 * 100.0),
            ("online_rate", 50.0),
            // paid online D03 D15 of fee-paying D03 D04 D15
            ("online_payment_rate", 2.0 / 3.0 * 100.0),
            ("digitized_rate", 10.0),
            // (2 + 3 + 1 + 3) / 15 × 20
            ("progress_score", 12.0),
            // votes in October: D01 very satisfied, D02 dissatisfied, D03 neutral
            ("satisfaction_rate", 100.0 / 3.0),
        ],
    );
    // Agency A: carried D01 D02 D12 D20; received D03..D08 D13 (7); resolved D01 D02 D03 D04;
    // withdrawn D05; pending D06 D07 D08 D12 D13 D20 (overdue D06 D12 D20).
    assert_counts(
        group(&rows, "agency", A.0),
        &[
            ("carried_over", 4),
            ("received", 7),
            ("to_process", 11),
            ("resolved", 4),
            ("resolved_early", 1),
            ("resolved_on_time", 2),
            ("resolved_late", 1),
            ("withdrawn", 1),
            ("pending", 6),
            ("pending_overdue", 3),
        ],
    );
    // Agency B: carried D16; received D15 D17 D18; resolved D15(late) D16(on time) D17(early);
    // pending D18 (overdue).
    let b = group(&rows, "agency", B.0);
    assert_counts(
        b,
        &[
            ("carried_over", 1),
            ("received", 3),
            ("to_process", 4),
            ("resolved", 3),
            ("resolved_early", 1),
            ("resolved_on_time", 1),
            ("resolved_late", 1),
            ("withdrawn", 0),
            ("pending", 1),
            ("pending_overdue", 1),
        ],
    );
    assert_eq!(b["group_name"], "UBND xã Thử Nghiệm");
    // The area of B; provincial departments have no area row.
    assert_eq!(int(group(&rows, "area", "99001"), "to_process"), 4);
    assert_eq!(
        rows.iter().filter(|r| r["group_kind"] == "area").count(),
        1,
        "only B has an area"
    );
    assert_eq!(int(group(&rows, "level", "province"), "to_process"), 11);
    assert_eq!(int(group(&rows, "field", "CT"), "to_process"), 15);
    // September was not published: its values are computed for the comparison.
    // September [01/09, 01/10): D01 D02 D11 D12 D16 D19 D20 to process, 5 received.
    assert_eq!(int(province, "to_process_prev"), 7);
    assert_eq!(int(province, "received_prev"), 5);
    assert_eq!(int(province, "resolved_prev"), 1);

    // The manifest states what was covered and that the checks passed.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(m["covers"], "Từ ngày 01/10/2026 đến ngày 31/10/2026");
    assert_eq!(m["period_start"], "2026-09-30T17:00:00+00:00");
    let checks = m["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["name"] == "to_process_identity"));
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:#?}");
    // Late procedures: the one procedure, late D03 D15 + overdue D06 D12 D18 D20.
    let late = read_csv(&out.join("late_procedures.csv"));
    assert_eq!(late.len(), 1);
    assert_eq!(int(&late[0], "late_total"), 6);
    // Satisfaction by agency: A has the three October votes.
    let sat = read_csv(&out.join("satisfaction_monthly.csv"));
    assert_eq!(int(group(&sat, "agency", A.0), "votes"), 3);
    assert_eq!(int(group(&sat, "agency", A.0), "very_satisfied"), 1);
    assert_eq!(int(group(&sat, "province", "province"), "votes"), 3);
    // No rating was extracted: those tables say so.
    assert!(
        text.contains("par_index: no data for tháng 10/2026"),
        "{text}"
    );
}

#[test]
fn the_fixture_matches_the_hand_worked_values_under_decree09() {
    let p = fixture_project();
    edit(
        p.path(),
        "pipelines/monthly_par.toml",
        "period_rule = \"calendar\"",
        "period_rule = \"decree09\"",
    );
    let out = p.path().join("preview");
    let text = preview(p.path(), "monthly_par", "2026-10", &out);
    assert!(
        text.contains("Từ ngày 15/09/2026 đến ngày 14/10/2026"),
        "{text}"
    );
    let rows = read_csv(&out.join("dossier_monthly.csv"));
    // Decree 09's October 2026 [15/09 00:00, 15/10 00:00) local:
    //   carried over: D11 D12 D19 = 3
    //   received: D01 D02 D03 D04 D05 D06 D07 D16 D17 D20 = 10
    //     in person D01 D04 D06 D16 D17 D20 = 6, online D02 D03 D07 = 3, postal D05 = 1
    //   resolved: D01(early) D02(on time) D03(late) D11(late) D16(on time) = 5
    //   withdrawn: D05 D19 = 2
    //   pending: D04 D06 D07 D12 D17 D20 = 6; overdue D12 D20 = 2; within 4
    let province = group(&rows, "province", "province");
    assert_counts(
        province,
        &[
            ("carried_over", 3),
            ("received", 10),
            ("received_in_person", 6),
            ("received_online", 3),
            ("received_postal", 1),
            ("to_process", 13),
            ("resolved", 5),
            ("resolved_early", 1),
            ("resolved_on_time", 2),
            ("resolved_late", 2),
            ("withdrawn", 2),
            ("pending", 6),
            ("pending_overdue", 2),
            ("pending_within", 4),
            ("votes", 4),
        ],
    );
    assert_rates(
        province,
        &[
            ("on_time_rate", 60.0),
            ("overdue_rate", 4.0 / 13.0 * 100.0),
            ("online_rate", 30.0),
            ("online_payment_rate", 50.0),
            ("digitized_rate", 10.0),
            ("progress_score", 9.0 / 13.0 * 20.0),
            // D11 satisfied, D01 very satisfied, D02 dissatisfied, D03 neutral
            ("satisfaction_rate", 50.0),
        ],
    );
    assert_counts(
        group(&rows, "agency", B.0),
        &[
            ("received", 2),
            ("to_process", 2),
            ("resolved", 1),
            ("pending", 1),
        ],
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(m["period_rule"], "decree09");
    assert_eq!(m["period_start"], "2026-09-14T17:00:00+00:00");
    assert_eq!(m["period_end"], "2026-10-14T17:00:00+00:00");
}

#[test]
fn published_periods_feed_the_comparison_and_the_trend() {
    let p = fixture_project();
    let sep = ok(run(
        p.path(),
        &["report", "monthly_par", "--period", "2026-09"],
    ));
    assert!(sep.contains("published_dossier_monthly: version"), "{sep}");
    // A dossier received in September arrives late: what was published for September stays
    // the comparison, as last month's email showed it.
    let late = d(
        "D21",
        A,
        4,
        1,
        "20260905080000",
        Some("20260930170000"),
        None,
    );
    std::fs::write(
        p.path().join("data/motcua/hoso_late.ndjson"),
        sync_record(&late).to_string() + "\n",
    )
    .unwrap();
    ok(run(p.path(), &["extract", "dossier"]));
    let out = p.path().join("preview");
    preview(p.path(), "monthly_par", "2026-10", &out);
    let rows = read_csv(&out.join("dossier_monthly.csv"));
    let province = group(&rows, "province", "province");
    assert_eq!(
        int(province, "to_process"),
        16,
        "D21 is carried into October"
    );
    assert_eq!(
        int(province, "to_process_prev"),
        7,
        "September as published"
    );
    let trend = read_csv(&out.join("trend_monthly.csv"));
    let periods: Vec<&str> = trend.iter().map(|r| r["period"].as_str()).collect();
    assert_eq!(periods, ["2026-09", "2026-10"]);
    assert_eq!(int(&trend[0], "received"), 5);
    assert_eq!(int(&trend[1], "received"), 10);

    // Republishing a period replaces its rows: one September in the published table.
    ok(run(
        p.path(),
        &["report", "monthly_par", "--period", "2026-09"],
    ));
    ok(run(
        p.path(),
        &["report", "monthly_par", "--period", "2026-10"],
    ));
    let q = p.path().join("q");
    preview(p.path(), "monthly_par", "2026-11", &q);
    let trend = read_csv(&q.join("trend_monthly.csv"));
    let periods: Vec<&str> = trend.iter().map(|r| r["period"].as_str()).collect();
    assert_eq!(periods, ["2026-09", "2026-10", "2026-11"]);
    // The republished September now holds D21.
    assert_eq!(int(&trend[0], "received"), 6);
}

#[test]
fn a_month_without_data_says_so() {
    let p = fixture_project();
    let out = p.path().join("preview");
    let text = preview(p.path(), "monthly_par", "2031-01", &out);
    assert!(
        text.contains("dossier_monthly: no data for tháng 1/2031"),
        "{text}"
    );
    assert!(read_csv(&out.join("dossier_monthly.csv")).is_empty());
    // Dossiers still pending past their due date are no activity of the month: the late list
    // follows dossier_monthly's rule and is empty too.
    assert!(text.contains("late_procedures: no data"), "{text}");
    assert!(read_csv(&out.join("late_procedures.csv")).is_empty());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(m["tables"][0]["no_data"], true);
}

#[test]
fn an_inconsistent_report_fails_its_checks_and_publishes_nothing() {
    let p = fixture_project();
    // An analyst's slip: "pending" forgets dossiers finished after the period (D20).
    edit(
        p.path(),
        "sql/par/dossier_monthly.sql",
        "finished_at IS NULL OR finished_at >= $period_end AS is_pending",
        "finished_at IS NULL AS is_pending",
    );
    let o = run(p.path(), &["report", "monthly_par", "--period", "2026-10"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("check `to_process_identity` failed on 4 row(s)"),
        "{err}"
    );
    assert!(
        err.contains("to_process must equal resolved + withdrawn + pending"),
        "{err}"
    );
    // The offending rows are shown: D20's province, agency, field and level rows.
    assert!(err.contains("000.00.04.H42"), "{err}");
    assert!(err.contains("was not published"), "{err}");
    assert!(
        !p.path()
            .join("warehouse/published_dossier_monthly/_delta_log")
            .is_dir(),
        "nothing was published"
    );
    // A rate outside 0..100 is caught without any declared check.
    edit(
        p.path(),
        "sql/par/dossier_monthly.sql",
        "finished_at IS NULL AS is_pending",
        "finished_at IS NULL OR finished_at >= $period_end AS is_pending",
    );
    edit(
        p.path(),
        "sql/par/dossier_monthly.sql",
        "c.received_online * 100.0 / c.received END AS online_rate",
        "c.received_online * 1000.0 / c.received END AS online_rate",
    );
    let o = run(p.path(), &["report", "monthly_par", "--period", "2026-10"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("check `dossier_monthly_rates_within_0_100` failed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_broken_sql_file_is_named_with_exit_code_2() {
    let p = fixture_project();
    edit(
        p.path(),
        "sql/par/late_procedures.sql",
        "MAX(procedure_name) AS procedure_name",
        "MAX(procedure_nam) AS procedure_name",
    );
    let o = run(p.path(), &["report", "monthly_par", "--period", "2026-10"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sql/par/late_procedures.sql: error:"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("procedure_nam"), "{}", stderr(&o));
    let o = run(p.path(), &["report", "monthly_par", "--period", "2026-13"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("YYYY-MM"), "{}", stderr(&o));
}

#[test]
fn the_demo_reproduces_the_provinces_published_facts() {
    let p = demo_project();
    let out = p.path().join("inv");
    preview(p.path(), "monthly_investment", "2021-10", &out);
    let rows = read_csv(&out.join("investment_monthly.csv"));
    let province = group(&rows, "province", "province");
    // Cumulative valid investment at the end of October 2021: 1,402 projects, 417,021 billion.
    assert_eq!(int(province, "valid_projects"), 1402);
    assert_eq!(province["valid_capital_vnd"], "417021000000000");
    let fdi = int(group(&rows, "capital_source", "fdi"), "valid_projects");
    let domestic = int(group(&rows, "capital_source", "domestic"), "valid_projects");
    assert_eq!(fdi + domestic, 1402);
    let new = read_csv(&out.join("new_projects.csv"));
    assert_eq!(new.len() as i64, int(province, "new_projects"));

    let out = p.path().join("par");
    preview(p.path(), "monthly_par", "2021-10", &out);
    let par = read_csv(&out.join("par_index.csv"));
    let y2019 = par.iter().find(|r| r["year"] == "2019").expect("2019 row");
    assert_eq!(num(y2019, "score"), 83.25);
    assert_eq!(int(y2019, "rank"), 12);
    assert_eq!(int(y2019, "rank_of"), 63);
    assert_eq!(int(y2019, "first_year"), 2012);
    assert_eq!(
        int(y2019, "rank_change_since_first"),
        15,
        "up 15 places since 2012"
    );
    let areas = read_csv(&out.join("par_index_areas.csv"));
    assert_eq!(areas.len(), 8, "eight areas of the PAR Index");
    let units = read_csv(&out.join("unit_ranking.csv"));
    assert!(units.iter().any(|r| r["subject_type"] == "department"));
    assert!(units.iter().any(|r| r["subject_type"] == "district"));
    // The demo's dossiers of October 2021 pass every publish check.
    let d = read_csv(&out.join("dossier_monthly.csv"));
    assert!(int(group(&d, "province", "province"), "to_process") > 0);
}

#[test]
fn the_area_seed_is_the_provinces_list() {
    let path = repo().join("sql/seeds/area.csv");
    let want = parstat::demo::province::area_seed_csv();
    if std::env::var_os("PARSTAT_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        got, want,
        "sql/seeds/area.csv is stale: rerun with PARSTAT_BLESS=1"
    );
    assert_eq!(want.lines().count(), 1 + 13 + 69);
}

#[test]
fn query_reads_the_warehouse_with_the_period_bound() {
    let p = fixture_project();
    let sql = "SELECT count(*) AS n FROM dossier WHERE received_at >= $period_start AND received_at < $period_end AND status NOT IN (1, 3)";
    // October 2026, calendar: D03 D04 D05 D06 D07 D08 D13 D15 D17 D18 (see the fixture).
    let csv = ok(run(
        p.path(),
        &["query", sql, "--period", "2026-10", "--format", "csv"],
    ));
    assert_eq!(csv.trim(), "n\n10");
    // Decree 09's October: D01 D02 D03 D04 D05 D06 D07 D16 D17 D20.
    let csv = ok(run(
        p.path(),
        &[
            "query", sql, "--period", "2026-10", "--rule", "decree09", "--format", "csv",
        ],
    ));
    assert_eq!(csv.trim(), "n\n10");
    let json = ok(run(
        p.path(),
        &[
            "query",
            "SELECT local_date(received_at) AS d FROM dossier WHERE dossier_code LIKE '%D13'",
            "--format",
            "json",
        ],
    ));
    assert_eq!(json.trim(), "{\"d\":\"2026-10-31\"}", "local, not UTC");
    let out = p.path().join("areas.parquet");
    ok(run(
        p.path(),
        &[
            "query",
            "SELECT * FROM area",
            "--format",
            "parquet",
            "-o",
            out.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(&out).unwrap().starts_with(b"PAR1"));
    let table = ok(run(p.path(), &["query", "SELECT 1 + 1 AS two"]));
    assert!(
        table.contains("| two |") && table.contains("| 2   |"),
        "{table}"
    );
    // Errors: unknown column (exit 2, the name shown); a period parameter without --period.
    let o = run(p.path(), &["query", "SELECT nope FROM dossier"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    let o = run(p.path(), &["query", sql]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("add --period YYYY-MM"),
        "{}",
        stderr(&o)
    );
}

/// The text part of both demo reports as a leader's mail client shows it, reviewed whenever
/// a template, a format or a figure changes (`cargo insta review`).
#[test]
fn the_email_text_of_the_demo_reports() {
    let p = demo_project();
    for report in ["monthly_par", "monthly_investment"] {
        let out = p.path().join(format!("preview_{report}"));
        preview(p.path(), report, "2021-11", &out);
        let text = std::fs::read_to_string(out.join("email.txt")).unwrap();
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let run_id = manifest["run_id"].as_str().unwrap();
        assert!(text.contains(run_id), "the text names its run");
        insta::assert_snapshot!(report, text.replace(run_id, "[run]"));
    }
}
