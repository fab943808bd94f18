//! File sources: CSV, NDJSON (including the national portal's sync records) and XLSX, from a
//! glob under the connection's root, read into rows of cells named by dataset column.

use calamine::{DataRef, Reader};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::cell::Cell;
use super::{ExtractError, Position, RawRow};
use crate::config::pipeline::{ExtractJob, FileFormat, SourceExpr, SourceSpec};

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
/// loaded: while they match, a later run skips the file without reading it (hashing every
/// loaded file was most of an incremental run's time), as `make` and `rsync` trust them. A
/// file rewritten in place with its old size and time restored on purpose is only seen again
/// with `--full`.
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
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cell::Int(i),
            // Above i64 but whole: exact as a decimal, where a float would round it.
            (None, Some(u)) => Cell::Decimal(u as i128, 0),
            _ => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Cell::Text(s.as_str().into()),
        other => Cell::Text(other.to_string().into()),
    }
}

/// At most `max` characters of `s`, for messages that quote a source value.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{}… ({} bytes)", &s[..at], s.len()),
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
                        // A sum past i64 is no amount of money: the source is wrong.
                        Some(v) => {
                            sum = sum.checked_add(v).ok_or_else(|| {
                                format!(
                                    "the sum of `{array}[].{field}` is beyond the range of a \
                                     64-bit integer (±9.2e18); correct the amounts in the source"
                                )
                            })?
                        }
                        None => {
                            return Err(format!(
                                "`{array}[].{field}` is not a whole number within ±9.2e18 in {}",
                                clip(&item.to_string(), 100)
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

/// Reads one file of `job`'s file source into rows; `columns` are the dataset columns in the
/// order of the cells.
pub fn read_file(
    path: &Path,
    rel: &str,
    job: &ExtractJob,
    columns: &[String],
    rows: &mut dyn FnMut(RawRow) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let SourceSpec::Files {
        format,
        sheet,
        header_row,
        delimiter,
        ..
    } = &job.source
    else {
        return Err(ExtractError::Config(format!(
            "dataset `{}`: not a file source",
            job.dataset
        )));
    };
    match format {
        FileFormat::Ndjson => read_ndjson(path, rel, job, columns, rows),
        FileFormat::Csv => read_csv(path, rel, job, columns, *delimiter, rows),
        FileFormat::Xlsx => read_xlsx(path, rel, job, columns, sheet.as_deref(), *header_row, rows),
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
    read_ndjson_from(
        &mut BufReader::with_capacity(1 << 20, f),
        path,
        rel,
        job,
        columns,
        rows,
    )
}

/// [`read_ndjson`] from any reader. A line longer than `max_record_bytes` is read no further
/// than that bound and skipped to its end: it goes to the quarantine with its length.
pub(crate) fn read_ndjson_from(
    reader: &mut impl BufRead,
    path: &Path,
    rel: &str,
    job: &ExtractJob,
    columns: &[String],
    rows: &mut dyn FnMut(RawRow) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let file: std::sync::Arc<str> = rel.into();
    let cap = job.max_record_bytes;
    let mut line = Vec::new();
    let mut n = 0u64;
    let mut checked = false;
    loop {
        line.clear();
        let read = reader
            .by_ref()
            .take(cap.saturating_add(1))
            .read_until(b'\n', &mut line)
            .map_err(|e| ExtractError::io(path, e))?;
        if read == 0 {
            break;
        }
        n += 1;
        let position = Position::Line(file.clone(), n);
        if line.len() as u64 > cap && line.last() != Some(&b'\n') {
            let rest = reader
                .skip_until(b'\n')
                .map_err(|e| ExtractError::io(path, e))?;
            let total = line.len() as u64 + rest as u64;
            rows(RawRow {
                position,
                cells: vec![Cell::Null; columns.len()],
                errors: vec![too_long("line", Some(total), cap)],
                misshapen: false,
            })?;
            continue;
        }
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
        let rec: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("not a JSON object: {e}"));
                rows(RawRow {
                    position,
                    cells: vec![Cell::Null; columns.len()],
                    errors,
                    misshapen: false,
                })?;
                continue;
            }
        };
        if !checked {
            check_fields(&format!("{rel}:{n}"), &rec.keys().cloned().collect(), job)?;
            checked = true;
        }
        let cells = record_cells(&rec, job, columns, &mut errors);
        rows(RawRow {
            position,
            cells,
            errors,
            misshapen: false,
        })?;
    }
    Ok(())
}

/// A JSON record's cells in the order of `columns`; what cannot be read is a reason in
/// `errors` and a null cell.
fn record_cells(
    rec: &serde_json::Map<String, serde_json::Value>,
    job: &ExtractJob,
    columns: &[String],
    errors: &mut Vec<String>,
) -> Vec<Cell> {
    columns
        .iter()
        .map(|c| {
            eval(&job.columns[c], rec).unwrap_or_else(|e| {
                errors.push(format!("{c}: {e}"));
                Cell::Null
            })
        })
        .collect()
}

/// The reason given for a line or record above `max_record_mb`.
fn too_long(what: &str, bytes: Option<u64>, cap: u64) -> String {
    format!(
        "a {what}{} longer than the {} MiB allowed (`max_record_mb`): a broken export (no \
         line ends, a quote left open); fix the file, or raise `max_record_mb` in the \
         pipeline if such {what}s are real",
        bytes.map(|b| format!(" of {b} bytes,")).unwrap_or_default(),
        cap / (1024 * 1024)
    )
}

/// Refuses to read further than `limit` bytes into the file: the CSV reader keeps a whole
/// record in memory, so a record without end (a quote left open, a file of one line) stops at
/// the bound instead of taking all memory.
struct Capped<R> {
    inner: R,
    read: u64,
    limit: std::rc::Rc<std::cell::Cell<u64>>,
}

#[derive(Debug)]
struct RecordTooLong;

impl std::fmt::Display for RecordTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("record too long")
    }
}

impl std::error::Error for RecordTooLong {}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = self.limit.get().saturating_sub(self.read);
        if room == 0 {
            return Err(std::io::Error::other(RecordTooLong));
        }
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        self.read += got as u64;
        Ok(got)
    }
}

/// The CSV reader's own buffer: bytes read ahead of the record being parsed.
const CSV_BUFFER: u64 = 1 << 20;

fn read_csv(
    path: &Path,
    rel: &str,
    job: &ExtractJob,
    columns: &[String],
    delimiter: u8,
    rows: &mut dyn FnMut(RawRow) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let f = std::fs::File::open(path).map_err(|e| ExtractError::io(path, e))?;
    read_csv_from(f, rel, job, columns, delimiter, rows)
}

/// [`read_csv`] from any reader. A record longer than `max_record_bytes` fails the file with
/// its line: where such a record ends cannot be known without reading it.
pub(crate) fn read_csv_from(
    input: impl Read,
    rel: &str,
    job: &ExtractJob,
    columns: &[String],
    delimiter: u8,
    rows: &mut dyn FnMut(RawRow) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let cap = job.max_record_bytes;
    let limit = std::rc::Rc::new(std::cell::Cell::new(
        cap.saturating_add(CSV_BUFFER).saturating_add(1),
    ));
    let mut r = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .buffer_capacity(CSV_BUFFER as usize)
        .from_reader(Capped {
            inner: input,
            read: 0,
            limit: limit.clone(),
        });
    let failed = |e: csv::Error, line: u64| csv_failed(e, rel, line, cap);
    let headers = csv_headers(&mut r).map_err(|e| failed(e, 1))?;
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
        limit.set(
            r.position()
                .byte()
                .saturating_add(cap)
                .saturating_add(CSV_BUFFER)
                .saturating_add(1),
        );
        let more = match r.read_byte_record(&mut rec) {
            Ok(more) => more,
            Err(e) => {
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                return Err(failed(e, line));
            }
        };
        if !more {
            break;
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let (cells, errors, misshapen) = csv_cells(&rec, headers.len(), &index, columns);
        rows(RawRow {
            position: Position::Line(file.clone(), line),
            cells,
            errors,
            misshapen,
        })?;
    }
    Ok(())
}

/// A CSV read error at `line` of `rel`; a record over `cap` bytes says so and how to allow it.
fn csv_failed(e: csv::Error, rel: &str, line: u64, cap: u64) -> ExtractError {
    if let csv::ErrorKind::Io(io) = e.kind() {
        if io.get_ref().is_some_and(|i| i.is::<RecordTooLong>()) {
            return ExtractError::Source(format!(
                "{rel}:{line}: {}",
                too_long("record", None, cap)
            ));
        }
    }
    ExtractError::Source(format!("{rel}:{line}: {e}"))
}

/// The header's names, trimmed and without a byte-order mark.
fn csv_headers<R: Read>(r: &mut csv::Reader<R>) -> Result<Vec<String>, csv::Error> {
    Ok(r.byte_headers()?
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim()
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .collect())
}

/// A CSV record's cells in the order of `columns` (`index`: each one's field in the record),
/// the problems found, and whether its shape differs from the header's.
fn csv_cells(
    rec: &csv::ByteRecord,
    header_len: usize,
    index: &[Option<usize>],
    columns: &[String],
) -> (Vec<Cell>, Vec<String>, bool) {
    let mut errors = Vec::new();
    let misshapen = rec.len() != header_len;
    if misshapen {
        errors.push(format!(
            "{} fields where the header has {}: the cells cannot be matched to their columns, so every cell is kept hashed; quote values that hold the delimiter",
            rec.len(),
            header_len
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
    (cells, errors, misshapen)
}

/// Excel's serial dates are days since 1899-12-30; it shows 0 to 2958465 (9999-12-31).
const EXCEL_LAST_SERIAL: f64 = 2_958_466.0;

fn xlsx_cell(d: DataRef) -> Result<Cell, String> {
    Ok(match d {
        DataRef::Empty => Cell::Null,
        DataRef::String(s) => Cell::Text(s.into()),
        DataRef::SharedString(s) => Cell::Text(s.into()),
        DataRef::Int(i) => Cell::Int(i),
        DataRef::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => Cell::Int(f as i64),
        DataRef::Float(f) => Cell::Float(f),
        DataRef::Bool(b) => Cell::Bool(b),
        DataRef::DateTime(dt) => Cell::Local(excel_time(dt.as_f64())?),
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => Cell::Text(s.into()),
        DataRef::Error(e) => Cell::Text(format!("#{e:?}").into()),
    })
}

/// A serial date-time (the fraction is the time of day) as a local time, within the range
/// Excel itself shows: beyond it (99999999, a number formatted as a date) is no date.
pub(crate) fn excel_time(serial: f64) -> Result<chrono::NaiveDateTime, String> {
    let out = || {
        format!(
            "Excel date serial {serial} is out of range (0 to {}, up to 9999-12-31); \
             correct the cell or its number format",
            EXCEL_LAST_SERIAL - 1.0
        )
    };
    if !(0.0..EXCEL_LAST_SERIAL).contains(&serial) {
        return Err(out());
    }
    let base = chrono::NaiveDate::from_ymd_opt(1899, 12, 30)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .ok_or_else(out)?;
    // Within the range checked above, the microseconds fit an i64 and the sum a date.
    let us = (serial * 86_400_000_000.0).round() as i64;
    base.checked_add_signed(chrono::TimeDelta::microseconds(us))
        .ok_or_else(out)
}

/// Refuses a workbook that unzips to more than `cap` bytes, by what its parts really unzip
/// to (a zip's stated sizes can lie), before the XLSX reader holds any of it: the shared
/// strings are read whole into memory.
fn check_workbook_size(path: &Path, rel: &str, cap: u64) -> Result<(), ExtractError> {
    let f = std::fs::File::open(path).map_err(|e| ExtractError::io(path, e))?;
    let unreadable = |e: zip::result::ZipError| {
        ExtractError::Source(format!("{rel}: not a readable XLSX workbook: {e}"))
    };
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(unreadable)?;
    let bomb = |part: &str| {
        ExtractError::Source(format!(
            "{rel}: the workbook unzips to more than the {} MiB allowed (`max_workbook_mb`; \
             reached in its part `{}`): a zip bomb, or a workbook too large for one file; \
             split it, or raise `max_workbook_mb` in the pipeline",
            cap / (1024 * 1024),
            clip(part, 80)
        ))
    };
    if zip.decompressed_size().is_none_or(|n| n > cap as u128) {
        return Err(bomb("(stated sizes)"));
    }
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    for i in 0..zip.len() {
        let mut part = zip.by_index(i).map_err(unreadable)?;
        loop {
            let n = part.read(&mut buf).map_err(|e| {
                ExtractError::Source(format!("{rel}: not a readable XLSX workbook: {e}"))
            })?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > cap {
                return Err(bomb(part.name()));
            }
        }
    }
    Ok(())
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
    check_workbook_size(path, rel, job.max_workbook_bytes)?;
    // The XLSX reader does unchecked arithmetic on positions read from the file (a dimension
    // `B2:A1`), which panics in builds with overflow checks: a malformed workbook, not a crash.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_xlsx_sheets(path, rel, job, columns, sheet, header_row, rows)
    }))
    .unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(ExtractError::Source(format!(
            "{rel}: a malformed XLSX workbook ({}); open it and save it again with a spreadsheet program",
            clip(&what, 200)
        )))
    })
}

#[allow(clippy::too_many_arguments)]
fn read_xlsx_sheets(
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
    for s in sheets {
        let mut cells = wb
            .worksheet_cells_reader(&s)
            .map_err(|e| ExtractError::Source(format!("{rel}[{s}]: {e}")))?;
        read_sheet(
            || cells.next_cell(),
            &format!("{rel}[{s}]"),
            job,
            columns,
            header_row,
            rows,
        )?;
    }
    Ok(())
}

/// One sheet, cell by cell as stored: a sheet's stated range may be huge (cells at A1 and
/// XFD1048576) where its stored cells are few, so no dense grid is ever made. Only the cells
/// under a header count; a row without any is not part of the table.
fn read_sheet<'a>(
    mut next_cell: impl FnMut() -> Result<Option<calamine::Cell<DataRef<'a>>>, calamine::XlsxError>,
    at: &str,
    job: &ExtractJob,
    columns: &[String],
    header_row: u32,
    rows: &mut dyn FnMut(RawRow) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let header_index = header_row.saturating_sub(1);
    let mut header: Vec<(u32, String)> = Vec::new();
    // Sheet column -> indexes of the cells it fills, once the header is read.
    let mut targets: Option<std::collections::HashMap<u32, Vec<usize>>> = None;
    let mut row: Option<(u32, Vec<Cell>, Vec<String>, bool)> = None;
    loop {
        let next = next_cell().map_err(|e| ExtractError::Source(format!("{at}: {e}")))?;
        let next_row = next.as_ref().map(|c| c.get_position().0);
        if row.as_ref().is_some_and(|r| Some(r.0) != next_row) {
            let (r, cells, errors, filled) = row.take().expect("a row");
            if filled {
                rows(RawRow {
                    position: Position::Text(format!("{at}:{}", r as u64 + 1)),
                    cells,
                    errors,
                    misshapen: false,
                })?;
            }
        }
        let Some(cell) = next else { break };
        let (r, c) = cell.get_position();
        if r < header_index {
            continue;
        }
        if r == header_index {
            if targets.is_none() {
                let name = calamine::Data::from(cell.get_value().clone())
                    .to_string()
                    .trim()
                    .to_string();
                if !name.is_empty() {
                    header.push((c, name));
                }
            }
            continue;
        }
        if targets.is_none() {
            targets = Some(header_targets(at, &header, job, columns, header_row)?);
        }
        let Some(to) = targets.as_ref().and_then(|t| t.get(&c)) else {
            continue;
        };
        let current =
            row.get_or_insert_with(|| (r, vec![Cell::Null; columns.len()], Vec::new(), false));
        let value = cell.get_value().clone();
        if matches!(value, DataRef::Empty) {
            continue;
        }
        current.3 = true;
        match xlsx_cell(value) {
            Ok(v) => {
                for &i in to {
                    current.1[i] = v.clone();
                }
            }
            Err(e) => {
                for &i in to {
                    current.2.push(format!("{}: {e}", columns[i]));
                }
            }
        }
    }
    if targets.is_none() {
        header_targets(at, &header, job, columns, header_row)?;
    }
    Ok(())
}

/// Checks a sheet's header against the pipeline and maps its columns to the cells.
fn header_targets(
    at: &str,
    header: &[(u32, String)],
    job: &ExtractJob,
    columns: &[String],
    header_row: u32,
) -> Result<std::collections::HashMap<u32, Vec<usize>>, ExtractError> {
    if header.is_empty() {
        return Err(ExtractError::Source(format!(
            "{at}: no header in row {header_row}"
        )));
    }
    let present: BTreeSet<String> = header.iter().map(|(_, h)| h.clone()).collect();
    check_fields(&format!("{at}:{header_row}"), &present, job)?;
    let mut targets: std::collections::HashMap<u32, Vec<usize>> = Default::default();
    for (i, c) in columns.iter().enumerate() {
        if let SourceExpr::Field(f) = &job.columns[c] {
            if let Some((col, _)) = header.iter().find(|(_, h)| h == f) {
                targets.entry(*col).or_default().push(i);
            }
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pipeline::{Mode, SourceSpec};
    use proptest::prelude::*;

    fn job(format: FileFormat, cap: u64) -> ExtractJob {
        let columns = [
            ("id", "id"),
            ("fee", "sum(fees[].amount)"),
            ("note", "note"),
            ("day", "day"),
        ];
        let columns = columns
            .iter()
            .filter(|(_, e)| format == FileFormat::Ndjson || !e.starts_with("sum"))
            .map(|(c, e)| (c.to_string(), SourceExpr::parse(e).unwrap()))
            .collect();
        ExtractJob {
            dataset: "t".into(),
            connection: "c".into(),
            source: SourceSpec::Files {
                path: "*".into(),
                format,
                sheet: None,
                header_row: 1,
                delimiter: b',',
            },
            mode: Mode::Merge,
            columns,
            formats: Default::default(),
            values: Default::default(),
            overlap_minutes: 0,
            future_tolerance_minutes: 10,
            quarantine_max_share: 0.05,
            max_record_bytes: cap,
            max_workbook_bytes: 8 << 20,
        }
    }

    fn names(job: &ExtractJob) -> Vec<String> {
        job.columns.keys().cloned().collect()
    }

    fn ndjson(bytes: &[u8], cap: u64) -> (Vec<RawRow>, Result<(), ExtractError>) {
        let job = job(FileFormat::Ndjson, cap);
        let mut out = Vec::new();
        let r = read_ndjson_from(
            &mut BufReader::with_capacity(64, bytes),
            Path::new("t.ndjson"),
            "t.ndjson",
            &job,
            &names(&job),
            &mut |r| {
                out.push(r);
                Ok(())
            },
        );
        (out, r)
    }

    fn csv(bytes: &[u8], cap: u64) -> (Vec<RawRow>, Result<(), ExtractError>) {
        let job = job(FileFormat::Csv, cap);
        let mut out = Vec::new();
        let r = read_csv_from(bytes, "t.csv", &job, &names(&job), b',', &mut |r| {
            out.push(r);
            Ok(())
        });
        (out, r)
    }

    #[test]
    fn a_long_ndjson_line_is_quarantined_unread_and_the_next_one_read() {
        let good = br#"{"id":1,"fees":[{"amount":5}],"note":"a","day":"2025-01-02"}"#;
        let mut file = good.to_vec();
        file.extend_from_slice(b"\n{\"id\":2,\"note\":\"");
        file.extend(std::iter::repeat_n(b'x', 5000));
        file.extend_from_slice(b"\"}\n");
        file.extend_from_slice(good);
        let (rows, r) = ndjson(&file, 1000);
        r.unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].errors.is_empty() && rows[2].errors.is_empty());
        assert_eq!(rows[1].position.to_string(), "t.ndjson:2");
        assert!(
            rows[1].errors[0].contains("a line of 5019 bytes, longer than"),
            "{:?}",
            rows[1].errors
        );
        assert_eq!(rows[2].cells[1], Cell::Int(5));
    }

    #[test]
    fn fee_sums_past_i64_and_huge_numbers_are_reasons() {
        let line = format!(
            r#"{{"id":{},"fees":[{{"amount":{}}},{{"amount":1}}],"note":null,"day":null}}"#,
            "9".repeat(200),
            i64::MAX
        );
        let (rows, r) = ndjson(line.as_bytes(), 1 << 20);
        r.unwrap();
        assert!(rows[0].errors[0].contains("fee: the sum of `fees[].amount` is beyond"));
        assert!(matches!(rows[0].cells[2], Cell::Float(f) if f > 1e199));
        let (rows, _) = ndjson(
            br#"{"id":18446744073709551615,"fees":[],"note":1,"day":2}"#,
            64,
        );
        assert_eq!(rows[0].cells[2], Cell::Decimal(u64::MAX as i128, 0));
    }

    #[test]
    fn a_long_csv_record_fails_the_file_with_its_line() {
        let mut file = b"id,note,day\n1,a,2025-01-01\n2,\"".to_vec();
        file.extend(std::iter::repeat_n(b'y', 3 << 20));
        let (rows, r) = csv(&file, 1 << 20);
        assert_eq!(rows.len(), 1);
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("t.csv:3: a record longer than the 1 MiB allowed"),
            "{e}"
        );
        // A header without end too.
        let (_, r) = csv(&vec![b'h'; 3 << 20], 1 << 20);
        assert!(r
            .unwrap_err()
            .to_string()
            .starts_with("t.csv:1: a record longer"));
    }

    #[test]
    fn excel_serials_out_of_range_are_reasons() {
        assert_eq!(
            excel_time(45943.5).unwrap().to_string(),
            "2025-10-13 12:00:00"
        );
        for s in [
            99999999.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e300,
            2_958_466.0,
        ] {
            assert!(excel_time(s).unwrap_err().contains("out of range"), "{s}");
        }
        assert!(excel_time(2_958_465.99).is_ok());
    }

    /// A workbook with `sheet` as its first sheet's XML, from one rust_xlsxwriter made.
    fn workbook_with_sheet(sheet: &str) -> Vec<u8> {
        let mut wb = rust_xlsxwriter::Workbook::new();
        let ws = wb.add_worksheet();
        ws.write_string(0, 0, "id").unwrap();
        ws.write_string(0, 1, "shared").unwrap();
        let base = wb.save_to_buffer().unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(base)).unwrap();
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for i in 0..zip.len() {
            let f = zip.by_index(i).unwrap();
            if f.name() == "xl/worksheets/sheet1.xml" {
                drop(f);
                out.start_file(
                    "xl/worksheets/sheet1.xml",
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
                std::io::Write::write_all(&mut out, sheet.as_bytes()).unwrap();
            } else {
                out.raw_copy_file(f).unwrap();
            }
        }
        out.finish().unwrap().into_inner()
    }

    fn xlsx(bytes: &[u8], cap: u64) -> (Vec<RawRow>, Result<(), ExtractError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.xlsx");
        std::fs::write(&path, bytes).unwrap();
        let mut job = job(FileFormat::Xlsx, 1 << 20);
        job.max_workbook_bytes = cap;
        let mut out = Vec::new();
        let r = read_xlsx(&path, "t.xlsx", &job, &names(&job), None, 1, &mut |r| {
            out.push(r);
            Ok(())
        });
        (out, r)
    }

    fn sheet_xml(dimension: &str, rows: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><dimension ref="{dimension}"/><sheetData>{rows}</sheetData></worksheet>"#
        )
    }

    #[test]
    fn a_huge_stated_range_is_read_cell_by_cell() {
        let rows = r#"<row r="1"><c r="A1" t="inlineStr"><is><t>id</t></is></c><c r="B1" t="inlineStr"><is><t>note</t></is></c><c r="C1" t="inlineStr"><is><t>day</t></is></c></row><row r="2"><c r="A2"><v>7</v></c><c r="C2"><v>99999999</v></c></row><row r="1048576"><c r="XFD1048576"><v>1</v></c></row>"#;
        let (out, r) = xlsx(
            &workbook_with_sheet(&sheet_xml("A1:XFD1048576", rows)),
            8 << 20,
        );
        r.unwrap();
        assert_eq!(out.len(), 1, "the far cell is under no header");
        assert_eq!(out[0].position.to_string(), "t.xlsx[Sheet1]:2");
        assert_eq!(
            out[0].cells,
            vec![Cell::Int(99999999), Cell::Int(7), Cell::Null]
        );
        // A dimension that ends before it starts: the reader's arithmetic overflows.
        let (_, r) = xlsx(&workbook_with_sheet(&sheet_xml("B2:A1", rows)), 8 << 20);
        if let Err(e) = r {
            assert!(e.to_string().contains("malformed XLSX workbook"), "{e}");
        }
    }

    #[test]
    fn a_workbook_unzipping_past_the_cap_is_refused() {
        let big = format!(
            r#"<row r="2"><c r="A2" t="inlineStr"><is><t>{}</t></is></c></row>"#,
            " ".repeat(3 << 20)
        );
        let book = workbook_with_sheet(&sheet_xml("A1:A2", &big));
        assert!(book.len() < 1 << 20);
        let (_, r) = xlsx(&book, 2 << 20);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("t.xlsx: the workbook unzips to more than the 2 MiB allowed"),
            "{e}"
        );
        // Its stated sizes made small: the counting while unzipping stops it all the same.
        let (_, r) = xlsx(&lie_about_sizes(&book), 2 << 20);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("more than the 2 MiB allowed") && e.contains("sheet1.xml"),
            "{e}"
        );
    }

    /// The zip with every entry's stated uncompressed size set to 100 bytes.
    pub(crate) fn lie_about_sizes(zip: &[u8]) -> Vec<u8> {
        let mut z = zip.to_vec();
        let mut i = 0;
        while i + 30 < z.len() {
            let at = match &z[i..i + 4] {
                [0x50, 0x4b, 0x03, 0x04] => Some(i + 22),
                [0x50, 0x4b, 0x01, 0x02] => Some(i + 24),
                _ => None,
            };
            if let Some(at) = at {
                z[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
            }
            i += 1;
        }
        z
    }

    fn xml_cell() -> impl Strategy<Value = String> {
        let reference = prop_oneof![
            "[A-Z]{1,3}[1-9][0-9]{0,6}",
            "[A-Z]{0,5}[0-9]{0,12}",
            Just("XFD1048576".to_string()),
        ];
        let kind = prop_oneof![
            Just(""),
            Just(r#" t="s""#),
            Just(r#" t="str""#),
            Just(r#" t="b""#),
            Just(r#" t="e""#),
            Just(r#" t="d""#),
            Just(r#" s="1""#),
        ];
        let value = prop_oneof![
            "[0-9]{1,30}",
            "-?[0-9]{0,5}\\.[0-9]{0,20}(E[+-]?[0-9]{1,4})?",
            Just("99999999".to_string()),
            any::<String>().prop_map(|s| s.replace(['<', '&'], "")),
        ];
        (reference, kind, value).prop_map(|(r, k, v)| format!(r#"<c r="{r}"{k}><v>{v}</v></c>"#))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(128)
        ))]

        /// Any bytes after a header: rows or an error naming the file, never a panic; no
        /// line longer than the bound is held.
        #[test]
        fn ndjson_of_any_bytes(body in proptest::collection::vec(
            prop_oneof![
                any::<u8>(),
                Just(b'\n'), Just(b'{'), Just(b'}'), Just(b'"'), Just(b':'), Just(b'['),
            ], 0..600),
            lines in proptest::collection::vec("\\{\"id\": ?(-?[0-9]{1,25}(\\.[0-9]{1,5})?|\"[^\"]{0,8}\"), \"fees\": \\[(\\{\"amount\": -?[0-9]{1,20}\\},?){0,3}\\], \"note\": null, \"day\": \"[0-9-]{0,12}\"\\}", 0..4),
        ) {
            let mut file = lines.join("\n").into_bytes();
            file.push(b'\n');
            file.extend_from_slice(&body);
            let (rows, r) = ndjson(&file, 80);
            if let Err(e) = r {
                prop_assert!(e.to_string().starts_with("t.ndjson:"), "{e}");
            }
            let mut last = 0;
            for row in &rows {
                prop_assert_eq!(row.cells.len(), 4);
                let Position::Line(_, n) = row.position else { panic!() };
                prop_assert!(n > last);
                last = n;
            }
        }

        #[test]
        fn csv_of_any_bytes(body in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\n'), Just(b','), Just(b'"'), Just(b'\r')], 0..600)
        ) {
            let mut file = b"id,note,day\n".to_vec();
            file.extend_from_slice(&body);
            let (rows, r) = csv(&file, 1 << 20);
            if let Err(e) = r {
                prop_assert!(e.to_string().starts_with("t.csv:"), "{e}");
            }
            for row in &rows {
                prop_assert_eq!(row.cells.len(), 3);
            }
        }

        /// Any bytes as a workbook: an error naming the file.
        #[test]
        fn xlsx_of_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (_, r) = xlsx(&bytes, 8 << 20);
            let e = r.unwrap_err().to_string();
            prop_assert!(e.starts_with("t.xlsx"), "{e}");
        }

        /// A real workbook whose sheet holds any cells at any positions, under any stated
        /// range: rows or an error, never a panic or a dense grid.
        #[test]
        fn xlsx_of_any_cells(
            dimension in prop_oneof!["[A-Z]{1,3}[0-9]{1,7}(:[A-Z]{1,3}[0-9]{1,7})?", Just("A1:XFD1048576".to_string())],
            cells in proptest::collection::vec(xml_cell(), 0..12),
            rows in proptest::collection::vec("[0-9]{0,11}", 1..4),
        ) {
            let header = r#"<row r="1"><c r="A1" t="s"><v>0</v></c><c r="C1" t="inlineStr"><is><t>note</t></is></c><c r="D1" t="inlineStr"><is><t>day</t></is></c></row>"#;
            let per = cells.len().div_ceil(rows.len()).max(1);
            let body: String = rows
                .iter()
                .zip(cells.chunks(per).chain(std::iter::repeat(&[][..])))
                .map(|(r, cs)| format!(r#"<row r="{r}">{}</row>"#, cs.concat()))
                .collect();
            let (out, r) = xlsx(&workbook_with_sheet(&sheet_xml(&dimension, &format!("{header}{body}"))), 8 << 20);
            match r {
                Ok(()) => for row in &out { prop_assert_eq!(row.cells.len(), 3); },
                Err(e) => prop_assert!(e.to_string().starts_with("t.xlsx"), "{e}"),
            }
        }
    }
}
