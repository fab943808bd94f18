//! `pipelines/<job>.toml`: one job per file, either an extract (a source into a dataset) or a
//! report (SQL files, a template, a period, recipients), each with an optional cron schedule.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use toml::Spanned;

use super::diag::{suggest, Diagnostics, Source};
use super::toml_file::{self, fields_of};

/// Source text -> dataset value, for one column.
/// A list of names as written, each with its position.
pub(crate) type NameList = Vec<Spanned<String>>;

pub(crate) type ValueMap = BTreeMap<String, Spanned<toml::Value>>;

#[derive(Deserialize)]
pub(crate) struct RawPipeline {
    pub kind: Spanned<String>,
    pub description: Option<String>,
    pub schedule: Option<Spanned<String>>,
    pub catch_up: Option<Spanned<String>>,
    pub retries: Option<Spanned<u32>>,
    // extract
    pub dataset: Option<Spanned<String>>,
    pub connection: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub records: Option<Spanned<String>>,
    pub sheet: Option<Spanned<String>>,
    pub header_row: Option<Spanned<u32>>,
    pub delimiter: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub overlap_minutes: Option<Spanned<i64>>,
    pub future_tolerance_minutes: Option<Spanned<i64>>,
    pub quarantine_max_share: Option<Spanned<f64>>,
    pub columns: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub formats: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub values: Option<Spanned<BTreeMap<String, Spanned<ValueMap>>>>,
    // report
    pub title: Option<Spanned<String>>,
    pub sql: Option<Spanned<Vec<Spanned<String>>>>,
    pub template: Option<Spanned<String>>,
    pub period: Option<Spanned<String>>,
    pub period_rule: Option<Spanned<String>>,
    pub needs: Option<Spanned<Vec<Spanned<String>>>>,
    pub to: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub cc: Vec<Spanned<String>>,
    /// Report tables to compare with the previous period: table -> key columns.
    pub compare: Option<Spanned<BTreeMap<String, Spanned<NameList>>>>,
    /// Publish checks: SQL that returns the offending rows.
    pub checks: Option<Spanned<Vec<Spanned<RawCheck>>>>,
    /// `*_rate` columns that may exceed 100 (disbursement can exceed registered capital).
    pub unbounded_rates: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawCheck {
    pub name: Spanned<String>,
    pub sql: Spanned<String>,
    pub message: Option<Spanned<String>>,
}

pub(crate) fn known_keys() -> Vec<&'static str> {
    fields_of::<RawPipeline>().to_vec()
}

pub(crate) fn parse(src: &Source, diags: &mut Diagnostics) -> Option<RawPipeline> {
    toml_file::parse(src, &known_keys(), diags)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Upsert by primary key; the newest `updated_at` wins.
    Merge,
    /// The whole table, atomically.
    Replace,
    /// Events, idempotent by key.
    Append,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Ndjson,
    Xlsx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodChoice {
    PreviousMonth,
    CurrentMonth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeriodRule {
    /// The calendar month in local time.
    Calendar,
    /// Decree 09/2019/NĐ-CP: the 15th of the previous month to the 14th.
    Decree09,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    Latest,
    All,
    None,
}

/// How a dataset column is read from a source record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceExpr {
    /// A field of the record.
    Field(String),
    /// The sum of `field` over the elements of the array `array` (a fee list, say).
    Sum { array: String, field: String },
    /// The number of elements of the array `array` (supplement requests, say).
    Count { array: String },
}

impl SourceExpr {
    /// `Field`, `sum(Array[].Field)` or `count(Array)`.
    pub fn parse(s: &str) -> Option<SourceExpr> {
        let s = s.trim();
        let is_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == ' ' || c == '-')
                && !n.starts_with(' ')
                && !n.ends_with(' ')
        };
        if let Some(inner) = s.strip_prefix("sum(").and_then(|r| r.strip_suffix(')')) {
            let (array, field) = inner.split_once("[].")?;
            return (is_name(array) && is_name(field)).then(|| SourceExpr::Sum {
                array: array.into(),
                field: field.into(),
            });
        }
        if let Some(inner) = s.strip_prefix("count(").and_then(|r| r.strip_suffix(')')) {
            return is_name(inner).then(|| SourceExpr::Count {
                array: inner.into(),
            });
        }
        is_name(s).then(|| SourceExpr::Field(s.into()))
    }
}

#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// `query` run on a postgres or mysql connection; `$watermark` is bound by the extractor.
    Query { query: String },
    /// Files matching `path` (a glob under the connection's root).
    Files {
        path: String,
        format: FileFormat,
        sheet: Option<String>,
        header_row: u32,
        delimiter: u8,
    },
    /// A paged JSON API at `endpoint` under the connection's url; `records` is the field of a
    /// page that holds the records.
    Http {
        endpoint: String,
        records: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct ExtractJob {
    pub dataset: String,
    pub connection: String,
    pub source: SourceSpec,
    pub mode: Mode,
    /// Dataset column -> how it is read from a source record; empty when the source already
    /// names the dataset's columns (a SQL query with aliases).
    pub columns: BTreeMap<String, SourceExpr>,
    /// Dataset column -> chrono format of its text in the source.
    pub formats: BTreeMap<String, String>,
    /// Dataset column -> source text -> dataset value.
    pub values: BTreeMap<String, BTreeMap<String, toml::Value>>,
    pub overlap_minutes: i64,
    /// How far past now a watermark time may be before its row is quarantined (a source
    /// clock or a typo that would otherwise pin the watermark in the future).
    pub future_tolerance_minutes: i64,
    pub quarantine_max_share: f64,
}

#[derive(Debug, Clone)]
pub struct ReportJob {
    pub title: String,
    /// SQL files, relative to the project folder; each result table is named after its file.
    pub sql: Vec<PathBuf>,
    pub template: PathBuf,
    pub period: PeriodChoice,
    pub period_rule: PeriodRule,
    pub needs: Vec<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// Tables whose measures get a `<measure>_prev` column, with the columns that match a row
    /// to its previous-period row.
    pub compare: BTreeMap<String, Vec<String>>,
    /// Checks that must pass before the report is published or sent.
    pub checks: Vec<ReportCheck>,
    /// `*_rate` columns exempt from the 0..100 check.
    pub unbounded_rates: Vec<String>,
}

/// A publish check: `sql` returns the rows that break it; none may.
#[derive(Debug, Clone)]
pub struct ReportCheck {
    pub name: String,
    pub sql: String,
    pub message: String,
    /// Byte range of `sql` in the pipeline file, to place errors found when it is planned.
    pub span: std::ops::Range<usize>,
}

impl ReportJob {
    /// Result table names, in the order of `sql`.
    pub fn tables(&self) -> Vec<String> {
        self.sql.iter().map(|p| table_name(p)).collect()
    }
}

/// The table a SQL file produces: its file name without `.sql`.
pub fn table_name(p: &std::path::Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
pub enum JobKind {
    Extract(ExtractJob),
    Report(ReportJob),
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file name without `.toml`.
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    /// Six-field cron expression (seconds first) in the project's time zone.
    pub schedule: Option<String>,
    pub catch_up: CatchUp,
    pub retries: u32,
    pub job: JobKind,
}

impl Pipeline {
    pub fn as_extract(&self) -> Option<&ExtractJob> {
        match &self.job {
            JobKind::Extract(e) => Some(e),
            JobKind::Report(_) => None,
        }
    }

    pub fn as_report(&self) -> Option<&ReportJob> {
        match &self.job {
            JobKind::Report(r) => Some(r),
            JobKind::Extract(_) => None,
        }
    }
}

/// Validates a cron expression the way the scheduler will parse it: six fields, seconds first.
pub fn parse_schedule(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// Checks a chrono format string: it must parse into known items.
pub fn valid_time_format(f: &str) -> bool {
    use chrono::format::{Item, StrftimeItems};
    !f.is_empty() && StrftimeItems::new(f).all(|i| !matches!(i, Item::Error))
}

pub(crate) fn choice<T: Copy>(
    src: &Source,
    v: Option<&Spanned<String>>,
    what: &str,
    options: &[(&str, T)],
    default: T,
    diags: &mut Diagnostics,
) -> T {
    let Some(v) = v else { return default };
    match options.iter().find(|(n, _)| *n == v.get_ref().as_str()) {
        Some((_, t)) => *t,
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            diags.error_at(
                src,
                v.span(),
                format!("unknown {what} `{}`", v.get_ref()),
                Some(suggest(v.get_ref(), &names)),
            );
            default
        }
    }
}

/// Reports a key that the pipeline's kind does not use.
pub(crate) fn not_for(
    src: &Source,
    span: Option<Range<usize>>,
    key: &str,
    kind: &str,
    diags: &mut Diagnostics,
) {
    if let Some(span) = span {
        diags.error_at(
            src,
            span,
            format!("`{key}` does not apply to {kind}"),
            Some(format!("remove `{key}`")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_expressions() {
        assert_eq!(
            SourceExpr::parse("MaHoSo"),
            Some(SourceExpr::Field("MaHoSo".into()))
        );
        assert_eq!(
            SourceExpr::parse("sum(DanhSachLePhi[].Gia)"),
            Some(SourceExpr::Sum {
                array: "DanhSachLePhi".into(),
                field: "Gia".into()
            })
        );
        assert_eq!(
            SourceExpr::parse("count(DanhSachHoSoBoSung)"),
            Some(SourceExpr::Count {
                array: "DanhSachHoSoBoSung".into()
            })
        );
        assert_eq!(SourceExpr::parse("sum(X)"), None);
        assert_eq!(SourceExpr::parse("a.b"), None);
    }

    #[test]
    fn validates_schedules_like_the_scheduler() {
        assert!(parse_schedule("0 30 1 * * *").is_ok());
        assert!(parse_schedule("0 0 7 3 * *").is_ok());
        assert!(
            parse_schedule("30 1 * * *").is_err(),
            "five fields lack seconds"
        );
        assert!(parse_schedule("0 61 1 * * *").is_err());
    }

    #[test]
    fn validates_time_formats() {
        assert!(valid_time_format("%Y%m%d%H%M%S"));
        assert!(valid_time_format("%d/%m/%Y"));
        assert!(!valid_time_format("%Q"));
    }
}
