//! `parstat demo --data-only`: deterministic, faithful to the schemas and pipelines, holding
//! the province's published facts, with bad rows on request and the same data in PostgreSQL
//! and MariaDB.

use calamine::{Data, DataType, Reader};
use parstat::config::schema::AllowedValue;
use parstat::config::{pipeline::SourceExpr, Project};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::util::*;

fn generate(project: &Path, out: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["demo", "--data-only", "--until", "2026-10", "--out", out];
    args.extend_from_slice(extra);
    let o = parstat(project, &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let manifest = std::fs::read_to_string(project.join(out).join("manifest.json")).unwrap();
    serde_json::from_str(&manifest).unwrap()
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        out.insert(
            e.strip_prefix(dir).unwrap().display().to_string(),
            std::fs::read(&e).unwrap(),
        );
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v.sort();
    v
}

#[test]
fn the_same_seed_gives_the_same_files() {
    let p = project_copy();
    generate(p.path(), "a", &["--dossiers", "4000", "--seed", "7"]);
    generate(p.path(), "b", &["--dossiers", "4000", "--seed", "7"]);
    generate(p.path(), "c", &["--dossiers", "4000", "--seed", "8"]);
    let (a, b, c) = (
        files(&p.path().join("a")),
        files(&p.path().join("b")),
        files(&p.path().join("c")),
    );
    assert!(
        a.len() > 90,
        "one dossier file per month and the others: {}",
        a.len()
    );
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(
        a.get("motcua/hoso_202610.ndjson"),
        c.get("motcua/hoso_202610.ndjson"),
        "another seed, other dossiers"
    );
}

fn ndjson_rows(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut rows = Vec::new();
    for f in walk(&dir.join("motcua")) {
        if f.extension().is_some_and(|e| e == "ndjson") {
            for line in std::fs::read(&f)
                .unwrap()
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                rows.push((f.display().to_string(), line.to_vec()));
            }
        }
    }
    rows
}

fn local(s: &str, fmt: &str) -> chrono::NaiveDateTime {
    chrono::NaiveDateTime::parse_from_str(s, fmt)
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(s, fmt).map(|d| d.and_hms_opt(0, 0, 0).unwrap())
        })
        .unwrap_or_else(|e| panic!("{s:?} does not match {fmt}: {e}"))
}

/// Reads one source value of a record through the pipeline's column mapping.
fn read(rec: &serde_json::Value, e: &SourceExpr) -> serde_json::Value {
    match e {
        SourceExpr::Field(f) => rec
            .get(f)
            .cloned()
            .unwrap_or_else(|| panic!("field {f} missing in {rec}")),
        SourceExpr::Sum { array, field } => rec[array]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x[field].as_i64().unwrap())
            .sum::<i64>()
            .into(),
        SourceExpr::Count { array } => rec[array].as_array().unwrap().len().into(),
    }
}

fn text_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[test]
fn generated_files_match_the_schemas_and_pipelines() {
    let p = project_copy();
    let manifest = generate(p.path(), "data", &["--dossiers", "6000"]);
    let project = Project::load(p.path()).unwrap_or_else(|d| panic!("{d:?}"));
    let schema = &project.schemas["dossier"];
    let job = project
        .pipeline("dossier")
        .unwrap()
        .as_extract()
        .unwrap()
        .clone();

    let mut count = 0;
    let mut statuses = BTreeSet::new();
    for (file, line) in ndjson_rows(&p.path().join("data")) {
        let rec: serde_json::Value =
            serde_json::from_slice(&line).unwrap_or_else(|e| panic!("{file}: {e}"));
        let obj = rec.as_object().unwrap();
        // Every source field is mapped: nothing unexpected, nothing missing.
        let mapped: BTreeSet<String> = job
            .columns
            .values()
            .map(|e| match e {
                SourceExpr::Field(f) => f.clone(),
                SourceExpr::Sum { array, .. } | SourceExpr::Count { array } => array.clone(),
            })
            .collect();
        let fields: BTreeSet<String> = obj.keys().cloned().collect();
        assert_eq!(fields, mapped, "{file}");
        let mut row: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (col, e) in &job.columns {
            let mut v = text_of(&read(&rec, e));
            if let (Some(map), Some(s)) = (job.values.get(col), &v) {
                let to = map
                    .get(s)
                    .unwrap_or_else(|| panic!("{file}: {col} value {s} has no mapping"));
                v = Some(match to {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
            row.insert(col.clone(), v);
        }
        for c in &schema.columns {
            let v = &row[&c.name];
            assert!(
                c.nullable || v.is_some(),
                "{file}: {} is null in {rec}",
                c.name
            );
            if let (Some(allowed), Some(v)) = (&c.allowed, v) {
                let ok = allowed.iter().any(|a| match a {
                    AllowedValue::Int(i) => v == &i.to_string(),
                    AllowedValue::Text(t) => v == t,
                });
                assert!(ok, "{file}: {} = {v} not allowed", c.name);
            }
            if let (Some(fmt), Some(v)) = (job.formats.get(&c.name), v) {
                local(v, fmt);
            }
        }
        let t = |c: &str| row[c].as_ref().map(|v| local(v, "%Y%m%d%H%M%S"));
        let status: u8 = row["status"].as_ref().unwrap().parse().unwrap();
        statuses.insert(status);
        assert_eq!(
            t("finished_at").is_some(),
            matches!(status, 7 | 9 | 10),
            "{rec}"
        );
        let received = t("received_at").unwrap();
        assert!(t("due_at").is_none_or(|d| d >= received), "{rec}");
        assert!(t("finished_at").is_none_or(|d| d >= received), "{rec}");
        assert!(t("updated_at").unwrap() >= received);
        count += 1;
    }
    assert_eq!(count, 6000);
    assert_eq!(manifest["datasets"]["dossier"]["rows"], 6000);
    for s in [3, 4, 7, 8, 9, 10] {
        assert!(statuses.contains(&s), "status {s} appears: {statuses:?}");
    }

    // The CSV and XLSX sources have exactly the mapped columns.
    for (dataset, file) in [
        ("investment_event", "data/dautu/su_kien_dau_tu.csv"),
        ("investment_disbursement", "data/dautu/giai_ngan.csv"),
        ("satisfaction_vote", "data/motcua/danh_gia_hai_long.csv"),
    ] {
        let job = project.pipeline(dataset).unwrap().as_extract().unwrap();
        let mut r = csv::Reader::from_path(p.path().join(file)).unwrap();
        let headers: BTreeSet<String> = r.headers().unwrap().iter().map(String::from).collect();
        let mapped: BTreeSet<String> = job
            .columns
            .values()
            .map(|e| match e {
                SourceExpr::Field(f) => f.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(headers, mapped, "{file}");
        let schema = &project.schemas[dataset];
        for rec in r.deserialize::<BTreeMap<String, String>>() {
            let rec = rec.unwrap();
            for (col, e) in &job.columns {
                let SourceExpr::Field(f) = e else {
                    unreachable!()
                };
                let v = &rec[f];
                let c = schema.column(col).unwrap();
                assert!(c.nullable || !v.is_empty(), "{file}: {col} empty");
                if let Some(map) = job.values.get(col) {
                    assert!(map.contains_key(v), "{file}: {col} = {v} has no mapping");
                }
                if let (Some(fmt), false) = (job.formats.get(col), v.is_empty()) {
                    local(v, fmt);
                }
            }
        }
    }
    let job = project.pipeline("rating").unwrap().as_extract().unwrap();
    let mut wb: calamine::Xlsx<_> =
        calamine::open_workbook(p.path().join("data/xephang/ket_qua_cchc.xlsx")).unwrap();
    for sheet in wb.sheet_names() {
        let range = wb.worksheet_range(&sheet).unwrap();
        let header: BTreeSet<String> = range
            .rows()
            .nth(2)
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        let mapped: BTreeSet<String> = job
            .columns
            .values()
            .map(|e| match e {
                SourceExpr::Field(f) => f.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(header, mapped, "sheet {sheet}");
        assert!(range.rows().count() > 3, "sheet {sheet} has data");
    }
}

#[test]
fn the_province_facts_hold_in_the_generated_files() {
    let p = project_copy();
    generate(p.path(), "data", &["--dossiers", "1000", "--seed", "11"]);
    // Investment: per project the latest event before 2021-11-01 (highest version); valid
    // unless terminated or revoked.
    let mut latest: BTreeMap<String, (u32, String, i128)> = BTreeMap::new();
    let mut r = csv::Reader::from_path(p.path().join("data/dautu/su_kien_dau_tu.csv")).unwrap();
    let cutoff = chrono::NaiveDate::from_ymd_opt(2021, 11, 1).unwrap();
    for rec in r.deserialize::<BTreeMap<String, String>>() {
        let rec = rec.unwrap();
        let date = chrono::NaiveDate::parse_from_str(&rec["NgayCap"], "%d/%m/%Y").unwrap();
        if date >= cutoff {
            continue;
        }
        let version: u32 = rec["LanCap"].parse().unwrap();
        let e = latest
            .entry(rec["MaDuAn"].clone())
            .or_insert((0, String::new(), 0));
        if version >= e.0 {
            *e = (
                version,
                rec["LoaiSuKien"].clone(),
                rec["VonDangKyVND"].parse().unwrap(),
            );
        }
    }
    let valid: Vec<i128> = latest
        .values()
        .filter(|(_, t, _)| t != "CHAM_DUT" && t != "THU_HOI")
        .map(|v| v.2)
        .collect();
    assert_eq!(valid.len(), 1_402);
    let total: i128 = valid.iter().sum();
    assert_eq!(total, 417_021 * 1_000_000_000, "417,021 billion VND");

    // PAR Index from the published workbook.
    let mut wb: calamine::Xlsx<_> =
        calamine::open_workbook(p.path().join("data/xephang/ket_qua_cchc.xlsx")).unwrap();
    let range = wb.worksheet_range("PAR_INDEX").unwrap();
    let headers: Vec<String> = range
        .rows()
        .nth(2)
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let col = |n: &str| headers.iter().position(|h| h == n).unwrap();
    let total_row = |year: f64| {
        range
            .rows()
            .skip(3)
            .find(|r| r[col("Năm")] == Data::Float(year) && r[col("Mã tiêu chí")] == "TOTAL")
            .unwrap()
            .to_vec()
    };
    let y2019 = total_row(2019.0);
    assert_eq!(y2019[col("Điểm")], Data::Float(83.25));
    assert_eq!(y2019[col("Xếp hạng")], Data::Float(12.0));
    assert_eq!(y2019[col("Trên tổng số")], Data::Float(63.0));
    let y2012 = total_row(2012.0);
    assert_eq!(y2012[col("Xếp hạng")], Data::Float(27.0));
    // The eight areas add up to the total.
    let areas: f64 = range
        .rows()
        .skip(3)
        .filter(|r| {
            r[col("Năm")] == Data::Float(2019.0)
                && r[col("Mã tiêu chí")].to_string().starts_with("LV")
        })
        .map(|r| r[col("Điểm")].as_f64().unwrap())
        .sum();
    assert!((areas - 83.25).abs() < 1e-9, "{areas}");
}

#[test]
fn history_has_the_trends_edges_and_reorganisation() {
    let p = project_copy();
    generate(p.path(), "data", &["--dossiers", "30000"]);
    let mut online: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let (
        mut before_midnight,
        mut after_midnight,
        mut district_after,
        mut late,
        mut resolved,
        mut overdue,
    ) = (0, 0, 0, 0, 0, 0);
    let mut tet = 0;
    for (_, line) in ndjson_rows(&p.path().join("data")) {
        let r: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let received = r["NgayTiepNhan"].as_str().unwrap();
        let status = r["TrangThaiHoSo"].as_u64().unwrap();
        let e = online.entry(received[..4].to_string()).or_default();
        e.1 += 1;
        if r["KenhThucHien"] == 2 {
            e.0 += 1;
        }
        let day = &received[6..8];
        let time = &received[8..12];
        if time >= "2350"
            && chrono::NaiveDate::parse_from_str(&received[..8], "%Y%m%d")
                .unwrap()
                .succ_opt()
                .unwrap()
                .format("%d")
                .to_string()
                == "01"
        {
            before_midnight += 1;
        }
        if day == "01" && time < "0010" {
            after_midnight += 1;
        }
        if received >= "20250701" && r["CapXuLy"] == "HUYEN" {
            district_after += 1;
        }
        if &received[..8] >= "20240208" && &received[..8] <= "20240214" {
            tet += 1;
        }
        if let (Some(f), Some(d)) = (r["NgayKetThucXuLy"].as_str(), r["NgayHenTra"].as_str()) {
            if status == 9 || status == 10 {
                resolved += 1;
                if f[..8] > d[..8] {
                    late += 1;
                }
            }
        }
        if r["NgayKetThucXuLy"].is_null()
            && ![1, 3].contains(&status)
            && r["NgayHenTra"].as_str().is_some_and(|d| d < "20261101")
        {
            overdue += 1;
        }
    }
    let share = |y: &str| online[y].0 as f64 / online[y].1 as f64;
    assert!(share("2019") < 0.15, "online 2019: {}", share("2019"));
    assert!(share("2026") > 0.60, "online 2026: {}", share("2026"));
    assert!(share("2022") > share("2019") && share("2026") > share("2022"));
    assert!(
        before_midnight >= 2 * 90 && after_midnight >= 2 * 90,
        "{before_midnight} {after_midnight}"
    );
    assert_eq!(district_after, 0, "no district bodies after 2025-07-01");
    let late_share = late as f64 / resolved as f64;
    assert!(
        (0.01..0.08).contains(&late_share),
        "a few percent late: {late_share}"
    );
    assert!(overdue > 10, "some pending past due: {overdue}");
    // The Tết dip: the week of Tết 2024 sees a fraction of an ordinary week.
    let per_week = 30_000.0 / (7.83 * 52.0);
    assert!(
        (tet as f64) < per_week * 0.3,
        "Tết week 2024: {tet} vs ~{per_week:.0} a week"
    );
}

#[test]
fn bad_rows_are_of_the_kinds_requested_and_counted() {
    let p = project_copy();
    let manifest = generate(
        p.path(),
        "data",
        &["--dossiers", "5000", "--bad-rows", "0.04"],
    );
    let mut found: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, line) in ndjson_rows(&p.path().join("data")) {
        let Ok(text) = std::str::from_utf8(&line) else {
            *found.entry("broken_encoding").or_default() += 1;
            continue;
        };
        let r: serde_json::Value = serde_json::from_str(text).unwrap();
        let status = r["TrangThaiHoSo"].as_u64().unwrap();
        if r["NgayTiepNhan"].is_null() {
            *found.entry("missing_date").or_default() += 1;
        } else if !(1..=10).contains(&status) {
            *found.entry("unknown_status").or_default() += 1;
        } else if r["NgayKetThucXuLy"]
            .as_str()
            .is_some_and(|f| f < r["NgayTiepNhan"].as_str().unwrap())
        {
            *found.entry("finish_before_receipt").or_default() += 1;
        }
    }
    let bad = manifest["datasets"]["dossier"]["bad"].as_object().unwrap();
    let total: u64 = found.values().sum();
    assert!((100..=300).contains(&total), "about 4% of 5000: {total}");
    for (k, v) in &found {
        assert_eq!(bad[*k].as_u64(), Some(*v), "{k}");
    }
    assert_eq!(found.len(), 4, "every kind: {found:?}");
    assert!(manifest["datasets"]["satisfaction_vote"]["bad"]
        .as_object()
        .is_some_and(|b| !b.is_empty()));
}

#[test]
fn rejects_bad_arguments_with_usage_errors() {
    let p = project_copy();
    let o = parstat(p.path(), &["demo", "--data-only", "--bad-rows", "1.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--bad-rows 1.5"), "{}", stderr(&o));
    let o = parstat(p.path(), &["demo", "--data-only", "--until", "2026/10"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected YYYY-MM"), "{}", stderr(&o));
    assert!(
        !p.path().join("data").exists(),
        "nothing written on a usage error"
    );
}

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY_ROOT: &str = "mysql://root@127.0.0.1:3306/test";

#[tokio::test(flavor = "multi_thread")]
async fn the_same_dossiers_land_in_postgres_and_mariadb() {
    use mysql_async::prelude::Queryable;
    let p = project_copy();
    let db = format!("parstat_demo_{}", std::process::id());
    let mut root = mysql_async::Conn::new(mysql_async::Opts::from_url(MY_ROOT).unwrap())
        .await
        .expect("MariaDB at 127.0.0.1:3306");
    root.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4"
    ))
    .await
    .unwrap();
    let my_url = format!("mysql://root@127.0.0.1:3306/{db}");
    let dir = p.path().to_path_buf();
    let (my, db2) = (my_url.clone(), db.clone());
    let manifest = tokio::task::spawn_blocking(move || {
        generate(
            &dir,
            "data",
            &[
                "--dossiers",
                "3000",
                "--bad-rows",
                "0.02",
                "--postgres",
                PG,
                "--pg-schema",
                &db2,
                "--mysql",
                &my,
            ],
        )
    })
    .await
    .unwrap();

    // The files' view: code -> (status, received).
    let mut expected: BTreeMap<String, (i64, Option<String>)> = BTreeMap::new();
    for (_, line) in ndjson_rows(&p.path().join("data")) {
        let text = String::from_utf8_lossy(&line);
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let received = r["NgayTiepNhan"].as_str().map(|s| {
            local(s, "%Y%m%d%H%M%S")
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        });
        expected.insert(
            r["MaHoSo"].as_str().unwrap().to_string(),
            (r["TrangThaiHoSo"].as_i64().unwrap(), received),
        );
    }
    assert_eq!(expected.len(), 3000);
    let votes = manifest["datasets"]["satisfaction_vote"]["rows"]
        .as_u64()
        .unwrap();

    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(conn);
    let rows = client
        .query(&format!("SELECT ma_ho_so, trang_thai::int8, to_char(ngay_tiep_nhan, 'YYYY-MM-DD HH24:MI:SS') FROM {db}.ho_so"), &[])
        .await
        .unwrap();
    let pg: BTreeMap<String, (i64, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(pg, expected, "PostgreSQL holds the files' dossiers");
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {db}.danh_gia_hai_long"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as u64, votes);
    let joined: i64 = client
        .query_one(&format!("SELECT count(*) FROM {db}.ho_so h JOIN {db}.thu_tuc t USING (ma_thu_tuc) JOIN {db}.don_vi d USING (ma_don_vi) JOIN {db}.linh_vuc l USING (ma_linh_vuc)"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        joined, 3000,
        "every dossier joins its procedure, agency and field"
    );
    client
        .batch_execute(&format!("DROP SCHEMA {db} CASCADE"))
        .await
        .unwrap();

    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&my_url).unwrap())
        .await
        .unwrap();
    let rows: Vec<(String, i64, Option<String>)> = conn
        .query("SELECT ma_ho_so, trang_thai, DATE_FORMAT(ngay_tiep_nhan, '%Y-%m-%d %H:%i:%s') FROM ho_so")
        .await
        .unwrap();
    let my: BTreeMap<String, (i64, Option<String>)> =
        rows.into_iter().map(|(a, b, c)| (a, (b, c))).collect();
    assert_eq!(my, expected, "MariaDB holds the files' dossiers");
    let n: Option<u64> = conn
        .query_first("SELECT count(*) FROM danh_gia_hai_long")
        .await
        .unwrap();
    assert_eq!(n, Some(votes));
    drop(conn);
    root.query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();
}
