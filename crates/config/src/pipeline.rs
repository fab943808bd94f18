//! `pipelines/<job>.toml`: one job per file, either an extract (a source into a dataset) or a
//! report (SQL files, a template, a period, recipients), each with an optional cron schedule.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

use super::diag::{suggest, Diagnostics, Source};
use super::toml_file::{self, fields_of};

/// Source text -> dataset value, for one column.
/// A list of names as written, each with its position.
pub(crate) type NameList = Vec<Spanned<String>>;

pub(crate) type ValueMap = BTreeMap<String, Spanned<toml::Value>>;

/// An extract pipeline as written: the keys every pipeline has, then its own.
#[derive(Deserialize)]
pub(crate) struct RawExtract {
    pub kind: Spanned<String>,
    pub description: Option<String>,
    pub schedule: Option<Spanned<String>>,
    pub catch_up: Option<Spanned<String>>,
    pub retries: Option<Spanned<u32>>,
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
    /// Longest CSV record or NDJSON line read, in MiB.
    pub max_record_mb: Option<Spanned<i64>>,
    /// Most an XLSX workbook may unzip to, in MiB.
    pub max_workbook_mb: Option<Spanned<i64>>,
    pub columns: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub formats: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub values: Option<Spanned<BTreeMap<String, Spanned<ValueMap>>>>,
}

/// A report pipeline as written: the keys every pipeline has, then its own.
#[derive(Deserialize)]
pub(crate) struct RawReport {
    pub kind: Spanned<String>,
    pub description: Option<String>,
    pub schedule: Option<Spanned<String>>,
    pub catch_up: Option<Spanned<String>>,
    pub retries: Option<Spanned<u32>>,
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

/// A pipeline file as written, read by the struct of its `kind`.
pub(crate) enum RawJob {
    Extract(Box<RawExtract>),
    Report(Box<RawReport>),
}

/// The keys that extracts and reports share, as written.
pub(crate) struct RawCommon<'a> {
    pub description: Option<&'a String>,
    pub schedule: Option<&'a Spanned<String>>,
    pub catch_up: Option<&'a Spanned<String>>,
    pub retries: Option<&'a Spanned<u32>>,
}

impl RawJob {
    /// The keys every pipeline has, whatever its kind.
    pub fn common(&self) -> RawCommon<'_> {
        match self {
            RawJob::Extract(r) => RawCommon {
                description: r.description.as_ref(),
                schedule: r.schedule.as_ref(),
                catch_up: r.catch_up.as_ref(),
                retries: r.retries.as_ref(),
            },
            RawJob::Report(r) => RawCommon {
                description: r.description.as_ref(),
                schedule: r.schedule.as_ref(),
                catch_up: r.catch_up.as_ref(),
                retries: r.retries.as_ref(),
            },
        }
    }
}

/// The keys of a raw struct, read from its `Deserialize` impl.
type Fields = fn() -> &'static [&'static str];

/// The job kinds, each with the keys of its raw struct.
const KINDS: [(&str, Fields); 2] = [
    ("extract", fields_of::<RawExtract>),
    ("report", fields_of::<RawReport>),
];

/// Reads a pipeline file: its `kind` first, then the whole file as that kind. A key of the
/// other kind is an unknown key whose help says which kind takes it.
pub(crate) fn parse(src: &Source, diags: &mut Diagnostics) -> Option<RawJob> {
    let kind = read_kind(src, diags)?;
    let own = KINDS.iter().find(|(k, _)| *k == kind.as_str())?.1();
    let help_for = |key: &str| {
        let (other, _) = KINDS
            .iter()
            .find(|(k, fields)| *k != kind.as_str() && fields().contains(&key))?;
        Some(format!(
            "`{key}` is a key of {other} pipelines: remove it here, or set `kind = \"{other}\"`"
        ))
    };
    match kind.as_str() {
        "extract" => {
            toml_file::parse_with(src, own, help_for, diags).map(|r| RawJob::Extract(Box::new(r)))
        }
        "report" => {
            toml_file::parse_with(src, own, help_for, diags).map(|r| RawJob::Report(Box::new(r)))
        }
        _ => None, // reported by `read_kind`
    }
}

/// The `kind` of a pipeline file, read alone (other keys are left to the kind's struct);
/// `None` after reporting a syntax error or a missing, mistyped or unknown kind.
fn read_kind(src: &Source, diags: &mut Diagnostics) -> Option<String> {
    #[derive(Deserialize)]
    struct KindOnly {
        kind: Spanned<String>,
    }
    let names = KINDS.map(|(k, _)| k);
    let kind = match toml::from_str::<KindOnly>(&src.text) {
        Ok(k) => k.kind,
        Err(e) => {
            // The syntax errors, all of them, when that is what failed; else `kind` itself.
            if toml_file::check_syntax(src, diags) {
                diags.error_at(
                    src,
                    e.span().unwrap_or(0..0),
                    toml_file::first_line(e.message()),
                    Some("set `kind = \"extract\"` or `kind = \"report\"`".into()),
                );
            }
            return None;
        }
    };
    if !names.contains(&kind.get_ref().as_str()) {
        diags.error_at(
            src,
            kind.span(),
            format!("unknown job kind `{}`", kind.get_ref()),
            Some(suggest(kind.get_ref(), &names)),
        );
        return None;
    }
    Some(kind.into_inner())
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
    /// The longest CSV record or NDJSON line read, in bytes: a longer one is never held in
    /// memory whole (a file without line ends, a quote left open).
    pub max_record_bytes: u64,
    /// The most an XLSX workbook may unzip to, in bytes (a zip bomb stops there).
    pub max_workbook_bytes: u64,
}

/// Default of `max_record_mb`.
pub const DEFAULT_MAX_RECORD_MB: i64 = 16;
/// Default of `max_workbook_mb`.
pub const DEFAULT_MAX_WORKBOOK_MB: i64 = 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `parse` reports for a pipeline file, one diagnostic (and its help) per entry.
    fn parse_errors(text: &str) -> (bool, Vec<String>) {
        let src = Source::new("pipelines/p.toml", text.to_string());
        let mut d = Diagnostics::default();
        let parsed = parse(&src, &mut d).is_some();
        (parsed, d.sorted().iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn rejects_a_report_key_in_an_extract_naming_its_kind() {
        let (parsed, out) =
            parse_errors("kind = \"extract\"\ndataset = \"dossier\"\ntitle = \"Báo cáo\"\n");
        assert!(parsed, "an unknown key does not stop the reading");
        assert_eq!(
            out,
            ["pipelines/p.toml:3:1: error: unknown key `title` at the top level\n  \
              help: `title` is a key of report pipelines: remove it here, or set `kind = \"report\"`"]
        );
    }

    #[test]
    fn rejects_an_extract_key_in_a_report_naming_its_kind() {
        let (parsed, out) =
            parse_errors("kind = \"report\"\ntitle = \"T\"\n\n[columns]\ncode = \"Ma\"\n");
        assert!(parsed);
        assert_eq!(
            out,
            ["pipelines/p.toml:4:2: error: unknown key `columns` at the top level\n  \
              help: `columns` is a key of extract pipelines: remove it here, or set `kind = \"extract\"`"]
        );
    }

    #[test]
    fn suggests_the_closest_key_for_a_key_of_no_kind() {
        let (_, out) = parse_errors("kind = \"extract\"\nshedule = \"0 0 1 * * *\"\n");
        assert_eq!(
            out,
            [
                "pipelines/p.toml:2:1: error: unknown key `shedule` at the top level\n  \
              help: did you mean `schedule`?"
            ]
        );
        // A key nested in a report's own table is not taken for an extract key.
        let (_, out) = parse_errors(
            "kind = \"report\"\n[[checks]]\nname = \"a\"\nsql = \"SELECT 1\"\npath = \"x\"\n",
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("pipelines/p.toml:5:1: error: unknown key `path` in `checks[0]`"),
            "{out:?}"
        );
        assert!(!out[0].contains("extract pipelines"), "{out:?}");
    }

    #[test]
    fn rejects_a_missing_kind() {
        let (parsed, out) = parse_errors("dataset = \"dossier\"\nshedule = \"x\"\n");
        assert!(!parsed);
        assert_eq!(
            out,
            ["pipelines/p.toml:1:1: error: missing field `kind`\n  \
              help: set `kind = \"extract\"` or `kind = \"report\"`"]
        );
    }

    #[test]
    fn rejects_a_kind_that_is_not_a_string() {
        let (parsed, out) = parse_errors("kind = 3\n");
        assert!(!parsed);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("pipelines/p.toml:1:8: error: invalid type: integer `3`"),
            "{out:?}"
        );
    }

    #[test]
    fn rejects_an_unknown_kind_with_a_suggestion() {
        let (parsed, out) = parse_errors("kind = \"extrakt\"\ndataset = \"dossier\"\n");
        assert!(!parsed);
        assert_eq!(
            out,
            ["pipelines/p.toml:1:8: error: unknown job kind `extrakt`\n  help: did you mean `extract`?"]
        );
        let (_, out) = parse_errors("kind = \"load\"\n");
        assert_eq!(
            out,
            ["pipelines/p.toml:1:8: error: unknown job kind `load`\n  help: one of `extract`, `report`"]
        );
    }

    #[test]
    fn reports_syntax_errors_before_the_kind() {
        let (parsed, out) = parse_errors("kind = \"extract\"\ndataset = \n");
        assert!(!parsed);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("pipelines/p.toml:2:") && out[0].contains("error: invalid TOML"),
            "{out:?}"
        );
    }

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
