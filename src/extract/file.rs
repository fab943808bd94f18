//! File sources: CSV, NDJSON (including the national portal's sync records) and XLSX, from a
//! glob under the connection's root, read into rows of cells named by dataset column.

use calamine::{Data, Reader};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::cell::Cell;
use super::{ExtractError, Position, RawRow};
use crate::config::pipeline::{ExtractJob, FileFormat, SourceExpr};

/// The files a glob matches, sorted, with their path relative to `root`.
pub fn matching_files(root: &Path, pattern: &str) -> Result<Vec<(PathBuf, String)>, ExtractError> {
    let full = root.join(pattern);
    let paths = glob::glob(&full.to_string_lossy())
        .map_err(|e| ExtractError::Config(format!("invalid glob `{pattern}`: {}", e.msg)))?;
    let mut out: Vec<(PathBuf, String)> = paths
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .map(|p| {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            (p, rel)
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// What the file system says of a file (device, inode, size, modification time to the
/// nanosecond), as a positive i64. Stored beside the content fingerprint when the file is
/// loaded: while they match, a later run skips the file without reading it (hashing 94 loaded
/// files of 16 GiB took most of a 13-second run that loaded 3,000 rows), as `make` and
/// `rsync` trust them. A file rewritten in place with its old size and time restored on
/// purpose is only seen again with `--full`.
pub fn stat_fingerprint(path: &Path) -> Result<i64, ExtractError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| ExtractError::io(path, e))?;
    let mut h = Sha256::new();
    for n in [m.dev(), m.ino(), m.size()] {
        h.update(n.to_le_bytes());
    }
    h.update(m.mtime().to_le_bytes());
    h.update(m.mtime_nsec().to_le_bytes());
    Ok(version(h))
}

/// A content fingerprint of a file, as a positive i64 (the Delta transaction version that
/// marks the file as loaded).
pub fn fingerprint(path: &Path) -> Result<i64, ExtractError> {
    let mut f = std::fs::File::open(path).map_err(|e| ExtractError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| ExtractError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(version(h))
}

/// A digest's first 8 bytes as a positive i64: a Delta transaction version.
fn version(h: Sha256) -> i64 {
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes")) & i64::MAX
}

/// The source fields a job reads, for the missing/unexpected check.
fn mapped_fields(job: &ExtractJob) -> BTreeSet<String> {
    job.columns
        .values()
        .map(|e| match e {
            SourceExpr::Field(f) => f.clone(),
            SourceExpr::Sum { array, .. } | SourceExpr::Count { array } => array.clone(),
        })
        .collect()
}

/// Missing or unexpected source fields: an error naming them before anything is written.
pub(crate) fn check_fields(
    file: &str,
    present: &BTreeSet<String>,
    job: &ExtractJob,
) -> Result<(), ExtractError> {
    let mapped = mapped_fields(job);
    let missing: Vec<&String> = mapped.difference(present).collect();
    let unexpected: Vec<&String> = present.difference(&mapped).collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let list = |v: &[&String]| {
        v.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut msg = format!("{file}: the source's fields do not match the pipeline's [columns]");
    if !missing.is_empty() {
        msg.push_str(&format!("; missing: {}", list(&missing)));
    }
    if !unexpected.is_empty() {
        msg.push_str(&format!("; unexpected: {}", list(&unexpected)));
    }
    msg.push_str(". Fix the export, or map the fields in the pipeline file");
    Err(ExtractError::Source(msg))
}

fn json_cell(v: &serde_json::Value) -> Cell {
    match v {
        serde_json::Value::Null => Cell::Null,
        serde_json::Value::Bool(b) => Cell::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Cell::Text(s.as_str().into()),
        other => Cell::Text(other.to_string().into()),
    }
}

pub(crate) fn eval(
    expr: &SourceExpr,
    rec: &serde_json::Map<String, serde_json::Value>,
) -> Result<Cell, String> {
    match expr {
        SourceExpr::Field(f) => Ok(rec.get(f).map(json_cell).unwrap_or(Cell::Null)),
        SourceExpr::Count { array } => match rec.get(array) {
            None | Some(serde_json::Value::Null) => Ok(Cell::Int(0)),
            Some(serde_json::Value::Array(a)) => Ok(Cell::Int(a.len() as i64)),
            Some(_) => Err(format!("`{array}` is not a list")),
        },
        SourceExpr::Sum { array, field } => match rec.get(array) {
            None | Some(serde_json::Value::Null) => Ok(Cell::Int(0)),
            Some(serde_json::Value::Array(a)) => {
                let mut sum = 0i64;
                for item in a {
                    match item.get(field).and_then(|v| {
                        v.as_i64()
                            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    }) {
                        Some(v) => sum += v,
                        None => {
                            return Err(format!(
                                "`{array}[].{field}` is not a whole number in {item}"
                            ))
                        }
                    }
                }
                Ok(Cell::Int(sum))
            }
            Some(_) => Err(format!("`{array}` is not a list")),
        },
    }
}

/// Reads one file into rows; `columns` are the dataset columns in the order of the cells.
#[allow(clippy::too_many_arguments)]
pub fn read_file(
    path: &Path,
    rel: &str,
    job: &ExtractJob,
    columns: &[String],
    format: FileFormat,
    sheet: Option<&str>,
    header_row: u32,
    delimiter: u8,
    rows: &mut dyn FnMut(RawRow) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    match format {
        FileFormat::Ndjson => read_ndjson(path, rel, job, columns, rows),
        FileFormat::Csv => read_csv(path, rel, job, columns, delimiter, rows),
        FileFormat::Xlsx => read_xlsx(path, rel, job, columns, sheet, header_row, rows),
    }
}

fn read_ndjson(
    path: &Path,
    rel: &str,
    job: &ExtractJob,
    columns: &[String],
    rows: &mut dyn FnMut(RawRow) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let f = std::fs::File::open(path).map_err(|e| ExtractError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let file: std::sync::Arc<str> = rel.into();
    let mut line = Vec::new();
    let mut n = 0u64;
    let mut checked = false;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| ExtractError::io(path, e))?;
        if read == 0 {
            break;
        }
        n += 1;
        let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let mut errors = Vec::new();
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(e) => {
                errors.push(format!("broken encoding: invalid UTF-8 at byte {} of the line; export the file as UTF-8", e.valid_up_to()));
                String::from_utf8_lossy(bytes)
            }
        };
        let position = Position::Line(file.clone(), n);
        let rec: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("not a JSON object: {e}"));
                rows(RawRow {
                    position,
                    cells: vec![Cell::Null; columns.len()],
                    errors,
                })?;
                continue;
            }
        };
        if !checked {
            check_fields(&format!("{rel}:{n}"), &rec.keys().cloned().collect(), job)?;
            checked = true;
        }
        let mut cells = Vec::with_capacity(columns.len());
        for c in columns {
            match eval(&job.columns[c], &rec) {
                Ok(cell) => cells.push(cell),
                Err(e) => {
                    errors.push(format!("{c}: {e}"));
                    cells.push(Cell::Null);
                }
            }
        }
        rows(RawRow {
            position,
            cells,
            errors,
        })?;
    }
    Ok(())
}

fn read_csv(
    path: &Path,
    rel: &str,
    job: &ExtractJob,
    columns: &[String],
    delimiter: u8,
    rows: &mut dyn FnMut(RawRow) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let f = std::fs::File::open(path).map_err(|e| ExtractError::io(path, e))?;
    let mut r = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, f));
    let headers: Vec<String> = r
        .byte_headers()
        .map_err(|e| ExtractError::Source(format!("{rel}: cannot read the header: {e}")))?
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim()
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .collect();
    check_fields(&format!("{rel}:1"), &headers.iter().cloned().collect(), job)?;
    let index: Vec<Option<usize>> = columns
        .iter()
        .map(|c| match &job.columns[c] {
            SourceExpr::Field(f) => headers.iter().position(|h| h == f),
            _ => None,
        })
        .collect();
    let mut rec = csv::ByteRecord::new();
    let file: std::sync::Arc<str> = rel.into();
    loop {
        let more = r
            .read_byte_record(&mut rec)
            .map_err(|e| ExtractError::Source(format!("{rel}: {e}")))?;
        if !more {
            break;
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let mut errors = Vec::new();
        if rec.len() != headers.len() {
            errors.push(format!(
                "{} fields where the header has {}",
                rec.len(),
                headers.len()
            ));
        }
        let cells = index
            .iter()
            .zip(columns)
            .map(|(i, c)| match i.and_then(|i| rec.get(i)) {
                None => Cell::Null,
                Some(b) => match std::str::from_utf8(b) {
                    Ok("") => Cell::Null,
                    Ok(s) => Cell::Text(s.into()),
                    Err(e) => {
                        errors.push(format!(
                            "{c}: broken encoding: invalid UTF-8 at byte {}",
                            e.valid_up_to()
                        ));
                        Cell::Text(String::from_utf8_lossy(b).into_owned().into())
                    }
                },
            })
            .collect();
        rows(RawRow {
            position: Position::Line(file.clone(), line),
            cells,
            errors,
        })?;
    }
    Ok(())
}

fn xlsx_cell(d: &Data) -> Cell {
    match d {
        Data::Empty => Cell::Null,
        Data::String(s) => Cell::Text(s.as_str().into()),
        Data::Int(i) => Cell::Int(*i),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => Cell::Int(*f as i64),
        Data::Float(f) => Cell::Float(*f),
        Data::Bool(b) => Cell::Bool(*b),
        Data::DateTime(dt) => {
            // Excel's serial date: days since 1899-12-30, the fraction being the time of day.
            let base =
                chrono::NaiveDate::from_ymd_opt(1899, 12, 30).and_then(|d| d.and_hms_opt(0, 0, 0));
            base.map(|b| {
                Cell::Local(
                    b + chrono::Duration::microseconds(
                        (dt.as_f64() * 86_400_000_000.0).round() as i64
                    ),
                )
            })
            .unwrap_or(Cell::Null)
        }
        Data::DateTimeIso(s) | Data::DurationIso(s) => Cell::Text(s.as_str().into()),
        Data::Error(e) => Cell::Text(format!("#{e:?}").into()),
    }
}

#[allow(clippy::too_many_arguments)]
fn read_xlsx(
    path: &Path,
    rel: &str,
    job: &ExtractJob,
    columns: &[String],
    sheet: Option<&str>,
    header_row: u32,
    rows: &mut dyn FnMut(RawRow) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let mut wb: calamine::Xlsx<_> = calamine::open_workbook(path)
        .map_err(|e| ExtractError::Source(format!("{rel}: not a readable XLSX workbook: {e}")))?;
    let names = wb.sheet_names();
    let sheets: Vec<String> = match sheet {
        None => names.first().cloned().into_iter().collect(),
        Some("*") => names.clone(),
        Some(s) => {
            if !names.iter().any(|n| n == s) {
                return Err(ExtractError::Source(format!(
                    "{rel}: no sheet `{s}`; the workbook has {}",
                    names.join(", ")
                )));
            }
            vec![s.to_string()]
        }
    };
    let header_index = header_row.saturating_sub(1) as usize;
    for s in sheets {
        let range = wb
            .worksheet_range(&s)
            .map_err(|e| ExtractError::Source(format!("{rel}[{s}]: {e}")))?;
        let (first_row, _) = range.start().unwrap_or((0, 0));
        let mut it = range.rows().enumerate();
        let header: Vec<String> = loop {
            match it.next() {
                Some((i, r)) if i + first_row as usize == header_index => {
                    break r.iter().map(|c| c.to_string().trim().to_string()).collect()
                }
                Some(_) => continue,
                None => {
                    return Err(ExtractError::Source(format!(
                        "{rel}[{s}]: no header in row {header_row}"
                    )))
                }
            }
        };
        let present: BTreeSet<String> = header.iter().filter(|h| !h.is_empty()).cloned().collect();
        check_fields(&format!("{rel}[{s}]:{header_row}"), &present, job)?;
        let index: Vec<Option<usize>> = columns
            .iter()
            .map(|c| match &job.columns[c] {
                SourceExpr::Field(f) => header.iter().position(|h| h == f),
                _ => None,
            })
            .collect();
        for (i, r) in it {
            if r.iter().all(|c| matches!(c, Data::Empty)) {
                continue;
            }
            let cells = index
                .iter()
                .map(|ix| {
                    ix.and_then(|ix| r.get(ix))
                        .map(xlsx_cell)
                        .unwrap_or(Cell::Null)
                })
                .collect();
            rows(RawRow {
                position: Position::Text(format!("{rel}[{s}]:{}", i + first_row as usize + 1)),
                cells,
                errors: Vec::new(),
            })?;
        }
    }
    Ok(())
}
