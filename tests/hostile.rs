//! Hostile files given to `parstat extract`: a 1 GiB NDJSON line or CSV record, an XLSX
//! stating a range of 17 billion cells, a zip bomb, dates of 99999999, fee sums past i64 and
//! 200-digit decimals. Each is a clear error (exit 1) or a quarantined row (exit 0), in
//! bounded memory, and the table stored before is left as it was.

use datafusion::prelude::SessionContext;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Output};

use crate::util::*;

const SCHEMA: &str = r#"
name = "ledger"
label = "Sổ thử"
primary_key = ["id"]
watermark = "updated_at"

[[columns]]
name = "id"
type = "Int64"
nullable = false
label = "Mã"

[[columns]]
name = "fee"
type = "Int64"
nullable = false
label = "Phí"

[[columns]]
name = "amount"
type = "Decimal128(20,2)"
nullable = true
label = "Số tiền"

[[columns]]
name = "day"
type = "Date32"
nullable = true
label = "Ngày"

[[columns]]
name = "note"
type = "Utf8"
nullable = true
label = "Ghi chú"

[[columns]]
name = "updated_at"
type = "Timestamp"
nullable = false
label = "Cập nhật"
"#;

/// A project with the `ledger` dataset read from `data/ledger/*.EXT`, with `extra` pipeline
/// settings, and a first file of three rows already loaded.
fn project(ext: &str, extra: &str) -> tempfile::TempDir {
    let p = project_copy();
    std::fs::write(p.path().join("schemas/ledger.toml"), SCHEMA).unwrap();
    let fee = if ext == "ndjson" {
        "sum(fees[].amount)"
    } else {
        "fee"
    };
    let day_format = if ext == "xlsx" {
        String::new()
    } else {
        "day = \"%Y%m%d\"\n".into()
    };
    std::fs::write(
        p.path().join("pipelines/ledger.toml"),
        format!(
            r#"kind = "extract"
dataset = "ledger"
connection = "exports"
path = "ledger/*.{ext}"
format = "{ext}"
mode = "merge"
quarantine_max_share = 0.6
{extra}

[columns]
id = "id"
fee = "{fee}"
amount = "amount"
day = "day"
note = "note"
updated_at = "updated_at"

[formats]
{day_format}updated_at = "%Y-%m-%d %H:%M:%S"
"#
        ),
    )
    .unwrap();
    let dir = p.path().join("data/ledger");
    std::fs::create_dir_all(&dir).unwrap();
    let good: Vec<Row> = (1..=3).map(good_row).collect();
    write_rows(&dir.join(format!("a.{ext}")), ext, &good);
    let out = ok(run(p.path(), &["extract", "ledger"]));
    assert!(out.contains("3 read, 3 written"), "{out}");
    p
}

/// One source row: cells as the file writes them (text, or a JSON value for NDJSON).
type Row = Vec<(&'static str, serde_json::Value)>;

fn good_row(id: i64) -> Row {
    vec![
        ("id", id.into()),
        ("fee", (1000 * id).into()),
        ("amount", "12.50".into()),
        ("day", "20250102".into()),
        ("note", "ok".into()),
        ("updated_at", "2025-01-02 03:04:05".into()),
    ]
}

/// `good_row(id)` with `field` set to `value`.
fn with(id: i64, field: &'static str, value: serde_json::Value) -> Row {
    let mut r = good_row(id);
    r.iter_mut().find(|(f, _)| *f == field).unwrap().1 = value;
    r
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn write_rows(path: &Path, ext: &str, rows: &[Row]) {
    match ext {
        "csv" => {
            let mut s = String::from("id,fee,amount,day,note,updated_at\n");
            for r in rows {
                let cells: Vec<String> = r.iter().map(|(_, v)| text(v)).collect();
                s.push_str(&cells.join(","));
                s.push('\n');
            }
            std::fs::write(path, s).unwrap();
        }
        "ndjson" => {
            let mut s = String::new();
            for r in rows {
                let mut m = serde_json::Map::new();
                for (f, v) in r {
                    if *f == "fee" {
                        // The fee is the sum of a fee list.
                        let items = match v {
                            serde_json::Value::Array(a) => a.clone(),
                            v => vec![v.clone()],
                        };
                        let list = items
                            .into_iter()
                            .map(|a| serde_json::json!({ "amount": a }))
                            .collect();
                        m.insert("fees".into(), serde_json::Value::Array(list));
                    } else {
                        m.insert(f.to_string(), v.clone());
                    }
                }
                s.push_str(&serde_json::Value::Object(m).to_string());
                s.push('\n');
            }
            std::fs::write(path, s).unwrap();
        }
        "xlsx" => {
            let mut wb = rust_xlsxwriter::Workbook::new();
            let date = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm-dd");
            let ws = wb.add_worksheet();
            for (c, (f, _)) in good_row(0).iter().enumerate() {
                ws.write_string(0, c as u16, *f).unwrap();
            }
            for (i, r) in rows.iter().enumerate() {
                let row = i as u32 + 1;
                for (c, (f, v)) in r.iter().enumerate() {
                    let c = c as u16;
                    match (f, v) {
                        // A date cell: a serial number with a date format.
                        (&"day", serde_json::Value::Number(n)) => {
                            ws.write_number_with_format(row, c, n.as_f64().unwrap(), &date)
                        }
                        (&"day", v) => {
                            let d = chrono::NaiveDate::parse_from_str(&text(v), "%Y%m%d").unwrap();
                            let serial = (d - chrono::NaiveDate::from_ymd_opt(1899, 12, 30)
                                .unwrap())
                            .num_days() as f64;
                            ws.write_number_with_format(row, c, serial, &date)
                        }
                        (_, serde_json::Value::Number(n)) => {
                            ws.write_number(row, c, n.as_f64().unwrap())
                        }
                        (_, v) => ws.write_string(row, c, text(v)),
                    }
                    .unwrap();
                }
            }
            wb.save(path).unwrap();
        }
        _ => unreachable!(),
    }
}

/// `parstat extract ledger` under /usr/bin/time: its output and peak resident memory in MiB.
fn extract_measured(project: &Path) -> (Output, u64) {
    let timing = project.join("time.txt");
    let o = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&timing)
        .arg(env!("CARGO_BIN_EXE_parstat"))
        .arg("--project")
        .arg(project)
        .args(["extract", "ledger"])
        .env("PARSTAT_PII_KEY", KEY)
        .output()
        .expect("run parstat under /usr/bin/time");
    let kib: u64 = std::fs::read_to_string(&timing)
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("peak RSS from /usr/bin/time");
    eprintln!("peak RSS of `parstat extract ledger`: {} MiB", kib / 1024);
    (o, kib / 1024)
}

/// A memory bound far below the hostile input, far above a normal run (about 100 MiB).
const PEAK_MIB: u64 = 400;

async fn ctx(project: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    for t in ["ledger", "quarantine"] {
        let p = project.join("warehouse").join(t);
        if p.join("_delta_log").is_dir() {
            let url = url::Url::from_directory_path(p.canonicalize().unwrap()).unwrap();
            let table = deltalake::DeltaTable::try_from_url(url).await.unwrap();
            parstat::warehouse::register(&ctx, &table, t).await.unwrap();
        }
    }
    ctx
}

async fn strings(ctx: &SessionContext, sql: &str) -> Vec<String> {
    use datafusion::arrow::array::Array;
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        let c = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let a = c
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        out.extend((0..a.len()).map(|i| a.value(i).to_string()));
    }
    out
}

async fn ledger_rows(project: &Path) -> i64 {
    let n = strings(&ctx(project).await, "SELECT count(*) FROM ledger").await;
    n[0].parse().unwrap()
}

/// The quarantine's `position: reasons` for the ledger, sorted.
async fn quarantined(project: &Path) -> Vec<String> {
    if !project.join("warehouse/quarantine/_delta_log").is_dir() {
        return Vec::new();
    }
    strings(
        &ctx(project).await,
        "SELECT position || ': ' || reasons FROM quarantine WHERE dataset = 'ledger' ORDER BY position",
    )
    .await
}

fn assert_failed(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    assert!(
        stderr(o).contains(needle),
        "{needle:?} not in:\n{}",
        stderr(o)
    );
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

/// A file of `prefix`, a hole of `gib` GiB (zeros, no disk) and `suffix`.
fn sparse(path: &Path, prefix: &[u8], gib: u64, suffix: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(prefix).unwrap();
    f.seek(SeekFrom::Current((gib << 30) as i64)).unwrap();
    f.write_all(suffix).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ndjson_line_of_1_gib_is_quarantined_in_bounded_memory() {
    let p = project("ndjson", "");
    let file = p.path().join("data/ledger/b.ndjson");
    let before = serde_json::json!({"id": 4, "fees": [{"amount": 1}], "updated_at": "2025-01-02 03:04:05", "amount": null, "day": null, "note": null});
    let after = serde_json::json!({"id": 5, "fees": [], "updated_at": "2025-01-02 03:04:05", "amount": "1", "day": "20250101", "note": "x"});
    sparse(
        &file,
        format!("{before}\n{{\"id\": 9, \"note\": \"").as_bytes(),
        1,
        format!("\"}}\n{after}\n").as_bytes(),
    );
    let (o, peak) = extract_measured(p.path());
    assert_ok(&o);
    assert!(peak < PEAK_MIB, "peak {peak} MiB");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        ledger_rows(p.path()).await,
        5,
        "the lines around it are loaded"
    );
    let q = quarantined(p.path()).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        q[0].starts_with("ledger/b.ndjson:2: a line of 1073741846 bytes, longer than the 16 MiB allowed (`max_record_mb`)"),
        "{q:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_record_of_1_gib_fails_the_file_in_bounded_memory() {
    let p = project("csv", "");
    let file = p.path().join("data/ledger/b.csv");
    // A quote left open: the record runs to the end of the file.
    sparse(
        &file,
        b"id,fee,amount,day,note,updated_at\n4,1,2,20250101,\"",
        1,
        b"\n",
    );
    let (o, peak) = extract_measured(p.path());
    std::fs::remove_file(&file).unwrap();
    assert_failed(
        &o,
        "ledger/b.csv:2: a record longer than the 16 MiB allowed (`max_record_mb`): a broken export (no line ends, a quote left open); fix the file, or raise `max_record_mb`",
    );
    assert!(peak < PEAK_MIB, "peak {peak} MiB");
    assert_eq!(ledger_rows(p.path()).await, 3, "the table is unchanged");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_xlsx_stating_a_range_of_17_billion_cells_loads_in_bounded_memory() {
    let p = project("xlsx", "");
    let file = p.path().join("data/ledger/b.xlsx");
    write_rows(&file, "xlsx", &[good_row(4)]);
    // The same workbook with a cell at XFD1048576: its range is A1:XFD1048576.
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    for (c, (f, _)) in good_row(0).iter().enumerate() {
        ws.write_string(0, c as u16, *f).unwrap();
    }
    let r = good_row(4);
    ws.write_number(1, 0, 4.0).unwrap();
    ws.write_number(1, 1, 4000.0).unwrap();
    ws.write_string(1, 5, text(&r[5].1)).unwrap();
    ws.write_string(1_048_575, 16_383, "far away").unwrap();
    wb.save(&file).unwrap();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&file).unwrap()).unwrap();
    let mut sheet = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("xl/worksheets/sheet1.xml").unwrap(),
        &mut sheet,
    )
    .unwrap();
    assert!(
        sheet.contains(r#"<dimension ref="A1:XFD1048576"/>"#),
        "{sheet}"
    );
    let (o, peak) = extract_measured(p.path());
    assert_ok(&o);
    assert!(peak < PEAK_MIB, "peak {peak} MiB");
    assert_eq!(ledger_rows(p.path()).await, 4);
    assert!(
        quarantined(p.path()).await.is_empty(),
        "a cell under no header is not a row"
    );
}

/// A workbook from rust_xlsxwriter with its first sheet's XML replaced by `sheet`.
fn workbook_with_sheet(path: &Path, sheet: &[u8]) {
    let mut wb = rust_xlsxwriter::Workbook::new();
    wb.add_worksheet().write_string(0, 0, "id").unwrap();
    let base = wb.save_to_buffer().unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(base)).unwrap();
    let mut out = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..zip.len() {
        let f = zip.by_index(i).unwrap();
        if f.name() == "xl/worksheets/sheet1.xml" {
            drop(f);
            out.start_file(
                "xl/worksheets/sheet1.xml",
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            out.write_all(sheet).unwrap();
        } else {
            out.raw_copy_file(f).unwrap();
        }
    }
    out.finish().unwrap();
}

/// `zip` with every entry's stated uncompressed size set to 100 bytes.
fn lie_about_sizes(path: &Path) {
    let mut z = std::fs::read(path).unwrap();
    for i in 0..z.len().saturating_sub(30) {
        let at = match &z[i..i + 4] {
            [0x50, 0x4b, 0x03, 0x04] => i + 22,
            [0x50, 0x4b, 0x01, 0x02] => i + 24,
            _ => continue,
        };
        z[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
    }
    std::fs::write(path, z).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_xlsx_zip_bomb_is_refused_before_it_is_unzipped() {
    // The bound made small, so that the bomb is quick to make: 64 MiB of XML from a file
    // of a few hundred KiB, against a cap of 8 MiB.
    let p = project("xlsx", "max_workbook_mb = 8");
    let file = p.path().join("data/ledger/b.xlsx");
    let mut sheet = br#"<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>"#.to_vec();
    sheet.resize(sheet.len() + (64 << 20), b' ');
    sheet.extend_from_slice(b"</sheetData></worksheet>");
    workbook_with_sheet(&file, &sheet);
    drop(sheet);
    assert!(std::fs::metadata(&file).unwrap().len() < 2 << 20);
    let (o, peak) = extract_measured(p.path());
    assert_failed(&o, "ledger/b.xlsx: the workbook unzips to more than the 8 MiB allowed (`max_workbook_mb`; reached in its part `(stated sizes)`): a zip bomb, or a workbook too large for one file; split it, or raise `max_workbook_mb` in the pipeline");
    assert!(peak < PEAK_MIB, "peak {peak} MiB");
    // The same bomb stating small sizes: stopped by counting what it unzips to.
    lie_about_sizes(&file);
    let (o, peak) = extract_measured(p.path());
    std::fs::remove_file(&file).unwrap();
    assert_failed(
        &o,
        "the workbook unzips to more than the 8 MiB allowed (`max_workbook_mb`; reached in its part `xl/worksheets/sheet1.xml`)",
    );
    assert!(peak < PEAK_MIB, "peak {peak} MiB");
    assert_eq!(ledger_rows(p.path()).await, 3, "the table is unchanged");
}

/// Rows 4 and 8 are good; 5 has a date of 99999999, 6 a fee past i64, 7 a 200-digit amount.
async fn hostile_values(ext: &str, rows: Vec<Row>, expected: &[&str]) {
    let p = project(ext, "");
    write_rows(&p.path().join(format!("data/ledger/b.{ext}")), ext, &rows);
    let (o, _) = extract_measured(p.path());
    assert_ok(&o);
    assert!(stdout(&o).contains("3 quarantined"), "{}", stdout(&o));
    assert_eq!(ledger_rows(p.path()).await, 5);
    let q = quarantined(p.path()).await;
    assert_eq!(q.len(), expected.len(), "{q:?}");
    for (got, want) in q.iter().zip(expected) {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

fn digits_200() -> String {
    "9".repeat(200)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_csv_values_are_quarantined_with_their_reasons() {
    hostile_values(
        "csv",
        vec![
            good_row(4),
            with(5, "day", "99999999".into()),
            with(6, "fee", "9223372036854775808".into()),
            with(7, "amount", digits_200().into()),
            good_row(8),
        ],
        &[
            "ledger/b.csv:3: day: \"99999999\" does not match format \"%Y%m%d\"",
            "ledger/b.csv:4: fee: \"9223372036854775808\" is out of range for Int64",
            "ledger/b.csv:5: amount: \"9999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999… (200 bytes)\" is out of range for Decimal128(20, 2): at most 18 digits before the decimal point",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_ndjson_values_are_quarantined_with_their_reasons() {
    let huge: serde_json::Value = serde_json::from_str(&digits_200()).unwrap();
    hostile_values(
        "ndjson",
        vec![
            good_row(4),
            with(5, "day", "99999999".into()),
            with(6, "fee", serde_json::json!([i64::MAX, 1])),
            with(7, "amount", huge),
            good_row(8),
        ],
        &[
            "ledger/b.ndjson:2: day: \"99999999\" does not match format \"%Y%m%d\"",
            "ledger/b.ndjson:3: fee: the sum of `fees[].amount` is beyond the range of a 64-bit integer (±9.2e18); correct the amounts in the source",
            "ledger/b.ndjson:4: amount: \"1",
        ],
    )
    .await;
    let p = project("ndjson", "");
    let q = {
        write_rows(
            &p.path().join("data/ledger/b.ndjson"),
            "ndjson",
            &[
                with(7, "amount", digits_200().into()),
                good_row(8),
                good_row(9),
            ],
        );
        assert_ok(&run(p.path(), &["extract", "ledger"]));
        quarantined(p.path()).await
    };
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        q[0].contains("amount: \"99999") && q[0].contains("is out of range for Decimal128(20, 2)"),
        "{q:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_xlsx_values_are_quarantined_with_their_reasons() {
    hostile_values(
        "xlsx",
        vec![
            good_row(4),
            with(5, "day", 99999999.into()),
            with(6, "fee", serde_json::json!(9.3e18)),
            with(7, "amount", serde_json::json!(1e200)),
            good_row(8),
        ],
        &[
            "ledger/b.xlsx[Sheet1]:3: day: Excel date serial 99999999 is out of range (0 to 2958465, up to 9999-12-31)",
            "ledger/b.xlsx[Sheet1]:4: fee: \"9300000000000000000\" is out of range for Int64",
            "ledger/b.xlsx[Sheet1]:5: amount: \"1000000000000000",
        ],
    )
    .await;
}
