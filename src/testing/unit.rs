//! Report unit tests: `sql/**/tests/*.toml` give a report small input tables (inline CSV or a
//! CSV file), a period and the rows expected out; the report's SQL runs on them in memory,
//! with no warehouse, so an analyst tests a change in seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema as ArrowSchema, SchemaRef};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone};
use datafusion::prelude::SessionContext;
use serde::Deserialize;
use toml::Spanned;

use super::{Outcome, Status};
use crate::config::diag::{suggest, Diagnostics, Source};
use crate::config::pipeline::{PeriodRule, ReportJob};
use crate::config::schema::Schema;
use crate::config::toml_file::{self, fields_of};
use crate::config::Project;
use crate::extract::cell::Cell;
use crate::extract::convert::{RowPlan, Scratch};
use crate::query::{self, Computed, Inputs, MemoryTables, Period, QueryError};

#[derive(Deserialize)]
struct RawUnit {
    description: Option<String>,
    report: Spanned<String>,
    period: Spanned<String>,
    rule: Option<Spanned<String>>,
    #[serde(default)]
    inputs: BTreeMap<String, Spanned<RawData>>,
    #[serde(default)]
    expect: Vec<Spanned<RawExpect>>,
}

#[derive(Deserialize)]
struct RawData {
    csv: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawExpect {
    table: Spanned<String>,
    #[serde(rename = "where")]
    filter: Option<Spanned<String>>,
    csv: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
}

fn known_keys() -> Vec<&'static str> {
    [
        fields_of::<RawUnit>(),
        fields_of::<RawData>(),
        fields_of::<RawExpect>(),
    ]
    .concat()
}

/// CSV text with where it came from, so that a bad cell is reported at its line.
#[derive(Debug, Clone)]
pub struct CsvText {
    /// The file holding the text (the test file, or the CSV file it names).
    pub file: PathBuf,
    /// Line of the file on which the CSV's header stands.
    pub first_line: usize,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Expect {
    pub table: String,
    pub filter: Option<String>,
    pub rows: CsvText,
    pub line: usize,
}

/// One report unit test file.
#[derive(Debug, Clone)]
pub struct UnitTest {
    pub file: PathBuf,
    pub description: String,
    pub report: String,
    pub period: Period,
    pub inputs: Vec<(String, CsvText)>,
    pub expects: Vec<Expect>,
}

/// The unit test files: every `*.toml` in a folder named `tests` under `sql/`, sorted.
pub fn files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in entries.flatten() {
            let p = rel.join(e.file_name());
            if e.path().is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "toml")
                && rel.file_name().is_some_and(|d| d == "tests")
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new("sql"), &mut out);
    out.sort();
    out
}

/// Reads every unit test file of the project, reporting problems with their positions.
pub fn load(project: &Project, diags: &mut Diagnostics) -> Vec<UnitTest> {
    let mut out = Vec::new();
    for rel in files(&project.root) {
        let text = match std::fs::read_to_string(project.root.join(&rel)) {
            Ok(t) => t,
            Err(e) => {
                diags.error_file(&rel, format!("cannot read: {e}"), None);
                continue;
            }
        };
        let src = Source::new(&rel, text);
        if let Some(t) = load_one(project, &src, diags) {
            out.push(t);
        }
    }
    out
}

/// Line on which the content of a TOML string starts (a multi-line string's first newline is
/// not part of it).
fn content_line(src: &Source, span: &std::ops::Range<usize>) -> usize {
    let opening = &src.text[span.start..span.end.min(src.text.len())];
    let line = src.line_col(span.start).0;
    if opening.starts_with("\"\"\"\n")
        || opening.starts_with("'''\n")
        || opening.starts_with("\"\"\"\r\n")
        || opening.starts_with("'''\r\n")
    {
        line + 1
    } else {
        line
    }
}

fn csv_text(
    src: &Source,
    what: &str,
    data_csv: Option<&Spanned<String>>,
    data_file: Option<&Spanned<String>>,
    at: std::ops::Range<usize>,
    diags: &mut Diagnostics,
    root: &Path,
) -> Option<CsvText> {
    match (data_csv, data_file) {
        (Some(c), None) => Some(CsvText {
            file: src.path.clone(),
            first_line: content_line(src, &c.span()),
            text: c.get_ref().clone(),
        }),
        (None, Some(f)) => {
            let dir = src.path.parent().unwrap_or(Path::new(""));
            let rel = dir.join(f.get_ref());
            match std::fs::read_to_string(root.join(&rel)) {
                Ok(text) => Some(CsvText {
                    file: rel,
                    first_line: 1,
                    text,
                }),
                Err(e) => {
                    diags.error_at(
                        src,
                        f.span(),
                        format!("cannot read `{}`: {e}", rel.display()),
                        Some("the path is relative to the test file's folder".into()),
                    );
                    None
                }
            }
        }
        _ => {
            diags.error_at(
                src,
                at,
                format!("{what} needs exactly one of `csv` (inline) or `file`"),
                None,
            );
            None
        }
    }
}

fn load_one(project: &Project, src: &Source, diags: &mut Diagnostics) -> Option<UnitTest> {
    let raw: RawUnit = toml_file::parse(src, &known_keys(), diags)?;
    let before = diags.error_count();
    let report_name = raw.report.get_ref().clone();
    let job = report_job(project, src, &raw.report, diags)?;
    let period = test_period(src, &raw, job.period_rule, diags);
    let inputs = test_inputs(project, src, &raw.inputs, diags);
    let expects = test_expects(project, src, job, &report_name, &raw.expect, diags);
    (diags.error_count() == before).then(|| UnitTest {
        file: src.path.clone(),
        description: raw.description.unwrap_or_default(),
        report: report_name,
        period: period.expect("an invalid period is an error"),
        inputs,
        expects,
    })
}

/// The report pipeline a test names, or an error at its `report` key.
fn report_job<'a>(
    project: &'a Project,
    src: &Source,
    report: &Spanned<String>,
    diags: &mut Diagnostics,
) -> Option<&'a ReportJob> {
    let reports = project.report_names();
    let report_name = report.get_ref();
    let job = project.pipeline(report_name).and_then(|p| p.as_report());
    if job.is_none() {
        diags.error_at(
            src,
            report.span(),
            format!("`{report_name}` is not a report pipeline"),
            Some(suggest(report_name, &reports)),
        );
    }
    job
}

/// The test's period, read with its `rule` (else the report's), or errors at either key.
fn test_period(
    src: &Source,
    raw: &RawUnit,
    report_rule: PeriodRule,
    diags: &mut Diagnostics,
) -> Option<Period> {
    let rule = match raw.rule.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
        None => report_rule,
        Some(("calendar", _)) => PeriodRule::Calendar,
        Some(("decree09", _)) => PeriodRule::Decree09,
        Some((other, span)) => {
            diags.error_at(
                src,
                span,
                format!("unknown period rule `{other}`"),
                Some(suggest(other, &["calendar", "decree09"])),
            );
            report_rule
        }
    };
    match Period::parse(raw.period.get_ref(), rule) {
        Ok(p) => Some(p),
        Err(e) => {
            diags.error_at(
                src,
                raw.period.span(),
                e.to_string(),
                Some("write `YYYY-MM`".into()),
            );
            None
        }
    }
}

/// What an input may be: a dataset, a published report table, or a seed.
fn input_names(project: &Project) -> Vec<String> {
    let mut known: Vec<String> = project.schemas.keys().cloned().collect();
    for p in &project.pipelines {
        if let Some(r) = p.as_report() {
            known.extend(r.tables().iter().map(|t| query::published_name(t)));
        }
    }
    for f in query::seed_files(&project.root.join("sql").join("seeds")) {
        known.push(crate::config::pipeline::table_name(&f));
    }
    known
}

/// The test's `[inputs.<name>]` tables, each checked to be a known input and read as CSV.
fn test_inputs(
    project: &Project,
    src: &Source,
    raw_inputs: &BTreeMap<String, Spanned<RawData>>,
    diags: &mut Diagnostics,
) -> Vec<(String, CsvText)> {
    let known = input_names(project);
    let known_refs: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
    let mut inputs = Vec::new();
    for (key, data) in raw_inputs {
        // Map keys carry no span: the key is found in the text (`[inputs.<name>]` or
        // `inputs.<name> =`), else the table is pointed at.
        let at = src
            .text
            .find(&format!("inputs.{key}"))
            .map(|i| i + "inputs.".len()..i + "inputs.".len() + key.len())
            .unwrap_or_else(|| data.span());
        let name = Spanned::new(at, key.clone());
        if !known.contains(name.get_ref()) {
            diags.error_at(
                src,
                name.span(),
                format!(
                    "`{}` is not a dataset, published table or seed",
                    name.get_ref()
                ),
                Some(suggest(name.get_ref(), &known_refs)),
            );
            continue;
        }
        let d = data.get_ref();
        if let Some(t) = csv_text(
            src,
            &format!("input `{}`", name.get_ref()),
            d.csv.as_ref(),
            d.file.as_ref(),
            name.span(),
            diags,
            &project.root,
        ) {
            inputs.push((name.get_ref().clone(), t));
        }
    }
    inputs
}

/// The test's `[[expect]]` tables, each checked to be a table of the report; none is an error.
fn test_expects(
    project: &Project,
    src: &Source,
    job: &ReportJob,
    report_name: &str,
    raw_expects: &[Spanned<RawExpect>],
    diags: &mut Diagnostics,
) -> Vec<Expect> {
    let tables = job.tables();
    let table_refs: Vec<&str> = tables.iter().map(|s| s.as_str()).collect();
    let mut expects = Vec::new();
    for e in raw_expects {
        let span = e.span();
        let e = e.get_ref();
        if !tables.contains(e.table.get_ref()) {
            diags.error_at(
                src,
                e.table.span(),
                format!(
                    "report `{report_name}` has no table `{}`",
                    e.table.get_ref()
                ),
                Some(suggest(e.table.get_ref(), &table_refs)),
            );
            continue;
        }
        if let Some(rows) = csv_text(
            src,
            "an `[[expect]]`",
            e.csv.as_ref(),
            e.file.as_ref(),
            span.start..span.start,
            diags,
            &project.root,
        ) {
            expects.push(Expect {
                table: e.table.get_ref().clone(),
                filter: e.filter.as_ref().map(|f| f.get_ref().clone()),
                rows,
                line: src.line_col(span.start).0,
            });
        }
    }
    if raw_expects.is_empty() {
        diags.error_at(
            src,
            0..0,
            "the test expects nothing",
            Some(
                "add `[[expect]]` tables: `table`, optional `where`, and the rows as `csv`".into(),
            ),
        );
    }
    expects
}

/// Rows of a CSV text: the header, then each record with its line in the file.
/// Records of a CSV text, each with its line in the file.
type Records = Vec<(usize, Vec<String>)>;

fn read_csv(t: &CsvText) -> Result<(Vec<String>, Records), String> {
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(t.text.as_bytes());
    let header: Vec<String> = r
        .headers()
        .map_err(|e| format!("{}:{}: {e}", t.file.display(), t.first_line))?
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(1);
            format!("{}:{}: {e}", t.file.display(), t.first_line + line - 1)
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(1);
        rows.push((
            t.first_line + line - 1,
            rec.iter().map(|s| s.to_string()).collect(),
        ));
    }
    Ok((header, rows))
}

/// A dataset's input rows, typed and validated as an extract would type them. Columns left
/// out of the CSV are NULL, whatever their nullability: a test gives only what it is about.
fn dataset_input(
    schema: &Schema,
    t: &CsvText,
    tz: chrono_tz::Tz,
) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let (header, rows) = read_csv(t)?;
    let stored: Vec<&str> = schema.stored_columns().map(|c| c.name.as_str()).collect();
    for h in &header {
        if !stored.contains(&h.as_str()) {
            let derived = schema
                .partition
                .as_ref()
                .filter(|p| &p.column == h)
                .and_then(|p| p.from.as_ref());
            return Err(match derived {
                Some((from, _)) => format!(
                    "{}:{}: `{h}` is derived from `{from}`: leave it out",
                    t.file.display(),
                    t.first_line
                ),
                None => format!(
                    "{}:{}: `{h}` is not a column of dataset `{}`; {}",
                    t.file.display(),
                    t.first_line,
                    schema.name,
                    suggest(h, &stored)
                ),
            });
        }
    }
    let mut relaxed = schema.clone();
    for c in relaxed.columns.iter_mut() {
        if !header.contains(&c.name) {
            c.nullable = true;
        }
    }
    let plan = RowPlan::plain(&relaxed, &header, tz);
    let mut builders = plan.builders(rows.len());
    let mut scratch = Scratch::default();
    for (line, cells) in &rows {
        let cells: Vec<Cell> = cells
            .iter()
            .map(|c| {
                if c.is_empty() {
                    Cell::Null
                } else {
                    Cell::Text(c.as_str().into())
                }
            })
            .collect();
        plan.append_row(&cells, &mut builders, &mut scratch)
            .map_err(|reasons| {
                format!(
                    "{}:{line}: input `{}`: {}",
                    t.file.display(),
                    schema.name,
                    reasons.join("; ")
                )
            })?;
    }
    let batch = plan.finish(&mut builders).map_err(|e| e.to_string())?;
    let target: SchemaRef = Arc::new(ArrowSchema::new(
        crate::warehouse::delta_schema(&schema.arrow_schema())
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<Field>>(),
    ));
    let batch = crate::warehouse::cast_batch(&batch, &target).map_err(|e| e.to_string())?;
    Ok((target, vec![batch]))
}

/// A published table or seed given as input: seeds are text, published tables take the
/// types their values read as.
fn other_input(
    name: &str,
    t: &CsvText,
    seed: bool,
) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let at = |e: arrow::error::ArrowError| {
        format!("{}:{}: input `{name}`: {e}", t.file.display(), t.first_line)
    };
    let schema = if seed {
        let (header, _) = read_csv(t)?;
        ArrowSchema::new(
            header
                .iter()
                .map(|h| Field::new(h, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        )
    } else {
        let format = arrow::csv::reader::Format::default().with_header(true);
        let (s, _) = format
            .infer_schema(std::io::Cursor::new(t.text.trim().as_bytes()), None)
            .map_err(at)?;
        s
    };
    let schema = Arc::new(schema);
    let reader = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_header(true)
        .build(std::io::Cursor::new(t.text.trim().as_bytes()))
        .map_err(at)?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(at)?;
    Ok((schema, batches))
}

/// A computed value, in the form expected values are compared with.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Float(f64),
    /// A UTC instant in microseconds.
    Micros(i64),
    Text(String),
}

fn values_of(col: &ArrayRef) -> Result<Vec<Value>, String> {
    let t = col.data_type();
    // Integers and instants are read as Int64, every other number as Float64, the rest as text.
    let (target, wrap): (DataType, fn(&ArrayRef, usize) -> Value) = if t.is_integer() {
        (DataType::Int64, |a, i| {
            Value::Int(a.as_primitive::<Int64Type>().value(i))
        })
    } else if matches!(t, DataType::Timestamp(..)) {
        (DataType::Int64, |a, i| {
            Value::Micros(a.as_primitive::<Int64Type>().value(i))
        })
    } else if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        (DataType::Float64, |a, i| {
            Value::Float(a.as_primitive::<Float64Type>().value(i))
        })
    } else {
        (DataType::Utf8, |a, i| {
            Value::Text(a.as_string::<i32>().value(i).to_string())
        })
    };
    let a = cast(col, &target).map_err(|e| e.to_string())?;
    Ok((0..a.len())
        .map(|i| {
            if a.is_null(i) {
                Value::Null
            } else {
                wrap(&a, i)
            }
        })
        .collect())
}

/// Whether an expected cell matches a computed value. An empty cell is NULL; a number
/// matches when the computed value, rounded to the expected number of decimals, equals it
/// (`66.67` matches 66.666…); times without an offset are local.
fn matches(expected: &str, actual: &Value, tz: chrono_tz::Tz) -> bool {
    match actual {
        Value::Null => expected.is_empty() || expected.eq_ignore_ascii_case("null"),
        _ if expected.is_empty() => false,
        Value::Int(v) => expected.parse::<i64>().is_ok_and(|e| e == *v),
        Value::Float(v) => {
            let Ok(e) = expected.parse::<f64>() else {
                return false;
            };
            let decimals = expected
                .split_once('.')
                .map(|(_, d)| d.trim_end_matches(|c: char| !c.is_ascii_digit()).len())
                .unwrap_or(0) as i32;
            let scale = 10f64.powi(decimals);
            ((v * scale).round() - (e * scale).round()).abs() < 0.5
        }
        Value::Micros(v) => parse_instant(expected, tz) == Some(*v),
        Value::Text(v) => v == expected,
    }
}

fn parse_instant(s: &str, tz: chrono_tz::Tz) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    let local = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })?;
    tz.from_local_datetime(&local)
        .earliest()
        .map(|t| t.timestamp_micros())
}

fn show(v: &Value, tz: chrono_tz::Tz) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Micros(us) => DateTime::from_timestamp_micros(*us)
            .map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default(),
        Value::Text(s) => s.clone(),
    }
}

/// Runs one unit test: builds its inputs, computes the report, compares each expectation.
pub async fn run(project: &Project, test: &UnitTest) -> Vec<Outcome> {
    let tz = project.settings.timezone;
    let fail = |detail: String| {
        vec![Outcome {
            label: label(test, ""),
            origin: test.file.clone(),
            status: Status::Fail,
            detail,
        }]
    };
    let tables = match memory_inputs(project, test, tz) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let pipeline = project
        .pipeline(&test.report)
        .expect("the report was checked on load");
    let computed =
        match query::compute_with(project, Inputs::Memory(&tables), pipeline, test.period).await {
            Ok(c) => c,
            Err(e @ QueryError::ChecksFailed { .. }) => {
                return fail(format!(
                    "the report's checks failed on the test's inputs:\n{e}"
                ))
            }
            Err(e) => return fail(format!("the report failed: {e}")),
        };
    let ctx = match computed_session(&computed) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut out = Vec::new();
    for (i, e) in test.expects.iter().enumerate() {
        let where_text = e
            .filter
            .as_ref()
            .map(|f| format!(" where {f}"))
            .unwrap_or_default();
        let outcome_label = label(test, &format!(" #{}: {}{where_text}", i + 1, e.table));
        let origin = PathBuf::from(format!("{}:{}", test.file.display(), e.line));
        let detail = compare(&ctx, e, tz).await.err();
        out.push(Outcome {
            label: outcome_label,
            origin,
            status: if detail.is_none() {
                Status::Pass
            } else {
                Status::Fail
            },
            detail: detail.unwrap_or_default(),
        });
    }
    out
}

/// An outcome's label: the report and the test file's stem, then `suffix`.
fn label(test: &UnitTest, suffix: &str) -> String {
    let stem = test
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{} {stem}{suffix}", test.report)
}

/// The test's inputs as in-memory tables, each read by its dataset's schema when it has one.
fn memory_inputs(
    project: &Project,
    test: &UnitTest,
    tz: chrono_tz::Tz,
) -> Result<MemoryTables, String> {
    let mut tables = MemoryTables::new();
    let seeds: Vec<String> = query::seed_files(&project.root.join("sql").join("seeds"))
        .iter()
        .map(|f| crate::config::pipeline::table_name(f))
        .collect();
    for (name, text) in &test.inputs {
        let built = match project.schemas.get(name) {
            Some(schema) => dataset_input(schema, text, tz),
            None => other_input(name, text, seeds.contains(name)),
        };
        tables.insert(name.clone(), built?);
    }
    Ok(tables)
}

/// A session holding the report's computed tables, for the expectations to query.
fn computed_session(computed: &Computed) -> Result<SessionContext, String> {
    let ctx = SessionContext::new();
    for t in &computed.tables {
        let mem =
            datafusion::datasource::MemTable::try_new(t.schema.clone(), vec![t.batches.clone()]);
        match mem {
            Ok(m) => {
                let _ = ctx.register_table(t.name.as_str(), Arc::new(m));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(ctx)
}

/// Compares an expectation with the computed table: the same rows, in any order, on the
/// expected columns.
async fn compare(ctx: &SessionContext, e: &Expect, tz: chrono_tz::Tz) -> Result<(), String> {
    let (header, rows) = read_csv(&e.rows)?;
    let computed = computed_rows(ctx, e, &header).await?;
    let (missing, extra) = unmatched(&rows, &computed, tz);
    if missing.is_empty() && extra.is_empty() {
        return Ok(());
    }
    Err(mismatch(e, &header, &rows, &computed, &missing, &extra, tz))
}

/// The rows of the expectation's table (through its `where`), on the expected columns.
async fn computed_rows(
    ctx: &SessionContext,
    e: &Expect,
    header: &[String],
) -> Result<Vec<Vec<Value>>, String> {
    let sql = match &e.filter {
        Some(f) => format!("SELECT * FROM \"{}\" WHERE {f}", e.table),
        None => format!("SELECT * FROM \"{}\"", e.table),
    };
    let df = parstat_plan::sql_with_options(ctx, &sql, crate::query::read_only())
        .await
        .map_err(|err| format!("`where` failed: {err}"))?;
    let schema = df.schema().as_arrow().clone();
    let batches = parstat_plan::collect(df)
        .await
        .map_err(|err| format!("`where` failed: {err}"))?;
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut columns: Vec<Vec<Value>> = Vec::new();
    for h in header {
        let Ok(idx) = schema.index_of(h) else {
            return Err(format!(
                "{}:{}: `{h}` is not a column of `{}`; {}",
                e.rows.file.display(),
                e.rows.first_line,
                e.table,
                suggest(h, &names)
            ));
        };
        let mut vals = Vec::new();
        for b in &batches {
            vals.extend(values_of(b.column(idx))?);
        }
        columns.push(vals);
    }
    let computed_rows = columns.first().map(|c| c.len()).unwrap_or(0);
    Ok((0..computed_rows)
        .map(|r| columns.iter().map(|c| c[r].clone()).collect())
        .collect())
}

/// Pairs expected rows with computed ones: the expected rows not computed, and the indices
/// of the computed rows not expected.
fn unmatched<'a>(
    rows: &'a Records,
    computed: &[Vec<Value>],
    tz: chrono_tz::Tz,
) -> (Vec<&'a (usize, Vec<String>)>, Vec<usize>) {
    let mut used = vec![false; computed.len()];
    let mut missing = Vec::new();
    for row in rows {
        let exp = &row.1;
        let found = (0..computed.len())
            .find(|&r| !used[r] && exp.iter().zip(&computed[r]).all(|(x, a)| matches(x, a, tz)));
        match found {
            Some(r) => used[r] = true,
            None => missing.push(row),
        }
    }
    let extra: Vec<usize> = (0..computed.len()).filter(|&r| !used[r]).collect();
    (missing, extra)
}

/// The failure detail: the counts, each expected row not computed (with the closest computed
/// row's differences), and each computed row not expected.
fn mismatch(
    e: &Expect,
    header: &[String],
    rows: &Records,
    computed: &[Vec<Value>],
    missing: &[&(usize, Vec<String>)],
    extra: &[usize],
    tz: chrono_tz::Tz,
) -> String {
    let row_text = |vals: Vec<String>| {
        header
            .iter()
            .zip(vals)
            .map(|(h, v)| format!("{h}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut d = format!(
        "expected {} row(s), computed {} (matched {})",
        rows.len(),
        computed.len(),
        rows.len() - missing.len()
    );
    for (line, exp) in missing.iter().copied() {
        d.push_str(&format!(
            "\n  {}:{line}: expected row not computed: {}",
            e.rows.file.display(),
            row_text(exp.to_vec())
        ));
        if let Some(diffs) = closest_diff(header, exp, computed, extra, tz) {
            d.push_str(&format!(
                "\n      closest computed row differs in {}",
                diffs.join("; ")
            ));
        }
    }
    for r in extra {
        d.push_str(&format!(
            "\n  computed row not expected: {}",
            row_text(computed[*r].iter().map(|v| show(v, tz)).collect())
        ));
    }
    d
}

/// How the unmatched computed row closest to an expected row differs from it, if any is left.
fn closest_diff(
    header: &[String],
    exp: &[String],
    computed: &[Vec<Value>],
    extra: &[usize],
    tz: chrono_tz::Tz,
) -> Option<Vec<String>> {
    let best = extra.iter().copied().max_by_key(|&r| {
        exp.iter()
            .zip(&computed[r])
            .filter(|(x, a)| matches(x, a, tz))
            .count()
    });
    best.map(|r| {
        header
            .iter()
            .zip(exp.iter().zip(&computed[r]))
            .filter(|(_, (x, a))| !matches(x, a, tz))
            .map(|(h, (x, a))| {
                format!(
                    "{h}: expected {}, computed {}",
                    if x.is_empty() { "NULL" } else { x },
                    show(a, tz)
                )
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_to_the_expected_decimals() {
        let tz = chrono_tz::Asia::Ho_Chi_Minh;
        assert!(matches("66.67", &Value::Float(200.0 / 3.0), tz));
        assert!(!matches("66.66", &Value::Float(200.0 / 3.0), tz));
        assert!(matches("67", &Value::Float(200.0 / 3.0), tz));
        assert!(!matches("66.7", &Value::Float(66.64), tz));
        assert!(matches("3", &Value::Int(3), tz));
        assert!(!matches("3.0", &Value::Int(3), tz));
        assert!(matches("", &Value::Null, tz));
        assert!(!matches("0", &Value::Null, tz));
        assert!(!matches("", &Value::Int(0), tz));
        // Local midnight of 1 October is 17:00 UTC on 30 September.
        let us = DateTime::parse_from_rfc3339("2026-09-30T17:00:00Z")
            .unwrap()
            .timestamp_micros();
        assert!(matches("2026-10-01 00:00:00", &Value::Micros(us), tz));
        assert!(matches("2026-09-30T17:00:00Z", &Value::Micros(us), tz));
        assert!(!matches("2026-09-30 17:00:00", &Value::Micros(us), tz));
    }
}
