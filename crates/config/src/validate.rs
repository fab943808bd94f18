//! Validation of pipeline files against the settings and the schemas: names that must exist,
//! source keys that must fit the connection, and what one job needs of another. A key that
//! does not fit the job's kind is already reported when the file is read (`pipeline::parse`).

use arrow_schema::DataType;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

use super::diag::{suggest, Diagnostics, Source};
use super::pipeline::{self, *};
use super::schema::{is_identifier, AllowedValue, Column, Schema};
use super::settings::{self, Connection, ConnectionKind, Settings};

/// What the pipelines declare that other pipelines are checked against.
#[derive(Default)]
struct Declared<'a> {
    /// dataset -> (pipeline file, line) of its producer, to report a second producer.
    producers: BTreeMap<String, (PathBuf, usize)>,
    /// report table -> (pipeline file, line) of the report that defines it.
    tables: BTreeMap<String, (PathBuf, usize)>,
    used_connections: BTreeSet<String>,
    /// The datasets reports need, checked once every extract is known.
    needs: Vec<(&'a Source, Spanned<String>)>,
}

pub(crate) fn pipelines(
    root: &Path,
    settings: &Settings,
    settings_src: &Source,
    schemas: &BTreeMap<String, Schema>,
    sources: &[Source],
    diags: &mut Diagnostics,
) -> Vec<Pipeline> {
    let raws: Vec<(&Source, RawJob)> = sources
        .iter()
        .filter_map(|src| pipeline::parse(src, diags).map(|r| (src, r)))
        .collect();
    let mut declared = Declared::default();
    let mut out = Vec::new();
    for (src, raw) in &raws {
        let common = raw.common();
        let (name, schedule, catch_up) = header(src, &common, diags);
        let job = match raw {
            RawJob::Extract(raw) => {
                extract(root, settings, schemas, src, raw, diags).map(|(e, conn)| {
                    declared.used_connections.insert(conn);
                    declared.producer(src, raw, &e, diags);
                    JobKind::Extract(e)
                })
            }
            RawJob::Report(raw) => report(root, src, raw, diags).map(|r| {
                declared.report(src, raw, schemas, diags);
                JobKind::Report(r)
            }),
        };
        if let Some(job) = job {
            out.push(Pipeline {
                name,
                file: src.path.clone(),
                description: common.description.cloned().unwrap_or_default(),
                schedule,
                catch_up,
                retries: common.retries.map(|r| *r.get_ref()).unwrap_or(2),
                job,
            });
        }
    }
    declared.check_needs(schemas, diags);
    for name in &declared.used_connections {
        if let Some(c) = settings.connections.get(name) {
            settings::check_connection_env(c, settings_src, diags);
        }
    }
    out
}

/// The name (from the file's), schedule and catch-up policy that every pipeline has.
fn header(
    src: &Source,
    common: &RawCommon,
    diags: &mut Diagnostics,
) -> (String, Option<String>, CatchUp) {
    let name = table_name(&src.path);
    if !is_identifier(&name) {
        diags.error_file(
            &src.path,
            format!("pipeline name `{name}` is not an identifier"),
            Some("name the file with lower-case letters, digits and `_`".into()),
        );
    }
    let schedule = common.schedule.and_then(|s| match parse_schedule(s.get_ref()) {
        Ok(_) => Some(s.get_ref().clone()),
        Err(e) => {
            diags.error_at(
                src,
                s.span(),
                format!("invalid cron expression `{}`: {e}", s.get_ref()),
                Some("six fields: sec min hour day month weekday, e.g. `0 30 1 * * *` for 01:30:00 daily".into()),
            );
            None
        }
    });
    let catch_up = choice(
        src,
        common.catch_up,
        "catch-up policy",
        &[
            ("latest", CatchUp::Latest),
            ("all", CatchUp::All),
            ("none", CatchUp::None),
        ],
        CatchUp::Latest,
        diags,
    );
    (name, schedule, catch_up)
}

impl<'a> Declared<'a> {
    /// Records the dataset an extract produces: one extract per dataset.
    fn producer(
        &mut self,
        src: &Source,
        raw: &RawExtract,
        e: &ExtractJob,
        diags: &mut Diagnostics,
    ) {
        let span = raw.dataset.as_ref().map(|d| d.span()).unwrap_or(0..0);
        if let Some((file, first)) = self.producers.get(&e.dataset) {
            diags.error_at(
                src,
                span,
                format!(
                    "dataset `{}` is already produced by {}:{first}",
                    e.dataset,
                    file.display()
                ),
                Some("one extract pipeline per dataset: remove one of them".into()),
            );
        } else {
            let line = src.line_col(span.start).0;
            self.producers
                .insert(e.dataset.clone(), (src.path.clone(), line));
        }
    }

    /// Records the tables a report defines (one namespace with the datasets) and what it needs.
    fn report(
        &mut self,
        src: &'a Source,
        raw: &RawReport,
        schemas: &BTreeMap<String, Schema>,
        diags: &mut Diagnostics,
    ) {
        for f in raw.sql.iter().flat_map(|l| l.get_ref()) {
            let t = table_name(Path::new(f.get_ref()));
            if let Some((file, first)) = self.tables.get(&t) {
                diags.error_at(
                    src,
                    f.span(),
                    format!(
                        "report table `{t}` is already defined at {}:{first}",
                        file.display()
                    ),
                    Some("a SQL file's name is its table's name: rename one file".into()),
                );
            } else if schemas.contains_key(&t) {
                diags.error_at(
                    src,
                    f.span(),
                    format!("report table `{t}` has the name of a dataset"),
                    Some("rename the SQL file: tables and datasets share one namespace".into()),
                );
            } else {
                let line = src.line_col(f.span().start).0;
                self.tables.insert(t, (src.path.clone(), line));
            }
        }
        if let Some(n) = &raw.needs {
            self.needs
                .extend(n.get_ref().iter().map(|d| (src, d.clone())));
        }
    }

    /// What a report needs must be produced by some extract.
    fn check_needs(&self, schemas: &BTreeMap<String, Schema>, diags: &mut Diagnostics) {
        for (src, d) in &self.needs {
            let ds = d.get_ref();
            if !schemas.contains_key(ds) {
                let names: Vec<&str> = schemas.keys().map(|s| s.as_str()).collect();
                diags.error_at(
                    src,
                    d.span(),
                    format!("unknown dataset `{ds}` in `needs`"),
                    Some(suggest(ds, &names)),
                );
            } else if !self.producers.contains_key(ds) {
                diags.error_at(
                    src,
                    d.span(),
                    format!("this job needs dataset `{ds}`, which no extract pipeline produces"),
                    Some(format!(
                        "add `pipelines/{ds}.toml` with `kind = \"extract\"` and `dataset = \"{ds}\"`"
                    )),
                );
            }
        }
    }
}

/// Well below the default overlap (60): a row accepted from a source clock that runs a little
/// ahead moves the watermark less than the next run's overlap looks back.
pub const DEFAULT_FUTURE_TOLERANCE_MINUTES: i64 = 10;

fn extract(
    root: &Path,
    settings: &Settings,
    schemas: &BTreeMap<String, Schema>,
    src: &Source,
    raw: &RawExtract,
    diags: &mut Diagnostics,
) -> Option<(ExtractJob, String)> {
    let target = target(settings, schemas, src, raw, diags)?;
    let mode = choice(
        src,
        raw.mode.as_ref(),
        "mode",
        &[
            ("merge", Mode::Merge),
            ("replace", Mode::Replace),
            ("append", Mode::Append),
        ],
        Mode::Merge,
        diags,
    );
    let source = match target.conn.kind {
        ConnectionKind::Postgres | ConnectionKind::Mysql => {
            query_source(src, raw, &target, mode, diags)
        }
        ConnectionKind::File => file_source(root, src, raw, &target, diags),
        ConnectionKind::Http => http_source(src, raw, &target, diags),
    };
    let schema = target.schema;
    let columns = schema
        .map(|s| column_map(src, raw, s, target.conn.kind, diags))
        .unwrap_or_default();
    let formats = schema
        .map(|s| formats(src, raw, s, diags))
        .unwrap_or_default();
    let values = schema
        .map(|s| values(src, raw, s, diags))
        .unwrap_or_default();
    let limits = limits(src, raw, schema, diags);
    let source = source?;
    schema?;
    let connection = target.connection.get_ref().clone();
    Some((
        ExtractJob {
            dataset: target.dataset.get_ref().clone(),
            connection: connection.clone(),
            source,
            mode,
            columns,
            formats,
            values,
            overlap_minutes: limits.overlap_minutes,
            future_tolerance_minutes: limits.future_tolerance_minutes,
            quarantine_max_share: limits.quarantine_max_share,
            max_record_bytes: limits.max_record_bytes,
            max_workbook_bytes: limits.max_workbook_bytes,
        },
        connection,
    ))
}

/// The dataset an extract writes and the connection it reads, as named and as found.
struct Target<'a> {
    dataset: &'a Spanned<String>,
    /// `None` when the dataset is unknown (reported): the source is still checked.
    schema: Option<&'a Schema>,
    connection: &'a Spanned<String>,
    conn: &'a Connection,
}

/// `dataset` and `connection`: both required, both names that must exist.
fn target<'a>(
    settings: &'a Settings,
    schemas: &'a BTreeMap<String, Schema>,
    src: &Source,
    raw: &'a RawExtract,
    diags: &mut Diagnostics,
) -> Option<Target<'a>> {
    let Some(ds) = &raw.dataset else {
        diags.error_at(
            src,
            raw.kind.span(),
            "an extract job needs `dataset`",
            Some("name a dataset of `schemas/`".into()),
        );
        return None;
    };
    let schema = schemas.get(ds.get_ref());
    if schema.is_none() {
        let names: Vec<&str> = schemas.keys().map(|s| s.as_str()).collect();
        diags.error_at(
            src,
            ds.span(),
            format!("unknown dataset `{}`", ds.get_ref()),
            Some(format!(
                "{}; datasets are the files of `schemas/`",
                suggest(ds.get_ref(), &names)
            )),
        );
    }
    let Some(cn) = &raw.connection else {
        diags.error_at(
            src,
            raw.kind.span(),
            "an extract job needs `connection`",
            Some("name a `[connections.NAME]` of parstat.toml".into()),
        );
        return None;
    };
    let Some(conn) = settings.connections.get(cn.get_ref()) else {
        let names: Vec<&str> = settings.connections.keys().map(|s| s.as_str()).collect();
        diags.error_at(
            src,
            cn.span(),
            format!("unknown connection `{}`", cn.get_ref()),
            Some(format!(
                "{}; connections are `[connections.NAME]` tables of parstat.toml",
                suggest(cn.get_ref(), &names)
            )),
        );
        return None;
    };
    Some(Target {
        dataset: ds,
        schema,
        connection: cn,
        conn,
    })
}

/// Whether a kind of connection takes a source key.
#[derive(Clone, Copy)]
enum Takes {
    Yes,
    No,
    /// Only with this file format.
    Only(FileFormat),
}

/// A source key, where it is written, and whether each kind of connection takes it.
type SourceKey = (&'static str, Option<Range<usize>>, [Takes; 3]);

/// The source keys that depend on the connection's kind, where each is written, and whether a
/// database, a file and an http connection take it. Keys not listed (`records`, `header_row`,
/// the limits, the column tables) are taken by every kind.
fn source_keys(raw: &RawExtract) -> [SourceKey; 6] {
    use FileFormat::{Csv, Xlsx};
    use Takes::{No, Only, Yes};
    let at = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.span());
    [
        ("query", at(&raw.query), [Yes, No, No]),
        ("path", at(&raw.path), [No, Yes, No]),
        ("format", at(&raw.format), [No, Yes, No]),
        ("endpoint", at(&raw.endpoint), [No, No, Yes]),
        ("sheet", at(&raw.sheet), [No, Only(Xlsx), No]),
        // A database or an http source has no delimiter to set: it is let through, unused.
        ("delimiter", at(&raw.delimiter), [Yes, Only(Csv), Yes]),
    ]
}

/// Reports every source key written that the connection's kind (or, for a file connection,
/// the file's format) does not take.
fn check_source_keys(
    src: &Source,
    raw: &RawExtract,
    kind: ConnectionKind,
    format: Option<FileFormat>,
    diags: &mut Diagnostics,
) {
    let (column, what) = match kind {
        ConnectionKind::Postgres | ConnectionKind::Mysql => (0, "a database connection"),
        ConnectionKind::File => (1, "a file connection"),
        ConnectionKind::Http => (2, "an http connection"),
    };
    for (key, span, takes) in source_keys(raw) {
        let misfit = match takes[column] {
            Takes::Yes => None,
            Takes::No => Some(what),
            Takes::Only(f) => (format != Some(f)).then_some("this format"),
        };
        if let (Some(span), Some(what)) = (span, misfit) {
            diags.error_at(
                src,
                span,
                format!("`{key}` does not apply to {what}"),
                Some(format!("remove `{key}`")),
            );
        }
    }
}

/// A database source: `query`, which should use `$watermark` exactly when the dataset has one.
fn query_source(
    src: &Source,
    raw: &RawExtract,
    target: &Target,
    mode: Mode,
    diags: &mut Diagnostics,
) -> Option<SourceSpec> {
    check_source_keys(src, raw, target.conn.kind, None, diags);
    let schema = target.schema;
    let Some(q) = &raw.query else {
        diags.error_at(
            src,
            target.connection.span(),
            format!(
                "connection `{}` is a database: the job needs `query`",
                target.connection.get_ref()
            ),
            Some("write the SELECT that returns the dataset's columns".into()),
        );
        return None;
    };
    if mode == Mode::Merge
        && schema.is_some_and(|s| s.watermark.is_some())
        && !q.get_ref().contains("$watermark")
    {
        diags.warning_at(
            src,
            q.span(),
            "the query does not use `$watermark`: every run reads the whole table",
            Some("add `WHERE updated_at >= $watermark` for incremental runs".into()),
        );
    }
    if schema.is_some_and(|s| s.watermark.is_none()) && q.get_ref().contains("$watermark") {
        diags.warning_at(
            src,
            q.span(),
            "the dataset has no watermark column: `$watermark` is always the earliest time, and every run reads the whole table",
            Some("remove the condition, or set `watermark` in the dataset's schema".into()),
        );
    }
    Some(SourceSpec::Query {
        query: q.get_ref().clone(),
    })
}

/// A file source: `format`, `path` (a glob under the connection's root) and the format's
/// own keys.
fn file_source(
    root: &Path,
    src: &Source,
    raw: &RawExtract,
    target: &Target,
    diags: &mut Diagnostics,
) -> Option<SourceSpec> {
    let format = file_format(src, raw, target.connection, diags);
    check_source_keys(src, raw, ConnectionKind::File, format, diags);
    let delimiter = match &raw.delimiter {
        Some(d) if d.get_ref().len() == 1 => d.get_ref().as_bytes()[0],
        Some(d) => {
            diags.error_at(
                src,
                d.span(),
                "delimiter must be one ASCII character",
                Some("for example `;`".into()),
            );
            b','
        }
        None => b',',
    };
    let Some(p) = &raw.path else {
        diags.error_at(
            src,
            target.connection.span(),
            "a file source needs `path`",
            Some("a glob under the connection's root, e.g. `motcua/hoso_*.ndjson`".into()),
        );
        return None;
    };
    let format = format?;
    check_glob(root, target.conn, src, p, diags);
    Some(SourceSpec::Files {
        path: p.get_ref().clone(),
        format,
        sheet: raw.sheet.as_ref().map(|s| s.get_ref().clone()),
        header_row: raw.header_row.as_ref().map(|h| *h.get_ref()).unwrap_or(1),
        delimiter,
    })
}

/// `format` of a file source: required, one of the formats read.
fn file_format(
    src: &Source,
    raw: &RawExtract,
    connection: &Spanned<String>,
    diags: &mut Diagnostics,
) -> Option<FileFormat> {
    let Some(f) = &raw.format else {
        diags.error_at(
            src,
            connection.span(),
            "a file source needs `format`",
            Some("one of `csv`, `ndjson`, `xlsx`".into()),
        );
        return None;
    };
    match f.get_ref().as_str() {
        "csv" => Some(FileFormat::Csv),
        "ndjson" | "jsonl" => Some(FileFormat::Ndjson),
        "xlsx" => Some(FileFormat::Xlsx),
        other => {
            diags.error_at(
                src,
                f.span(),
                format!("unknown file format `{other}`"),
                Some(suggest(other, &["csv", "ndjson", "xlsx"])),
            );
            None
        }
    }
}

/// An http source: `endpoint` under the connection's url, and optionally `records`.
fn http_source(
    src: &Source,
    raw: &RawExtract,
    target: &Target,
    diags: &mut Diagnostics,
) -> Option<SourceSpec> {
    check_source_keys(src, raw, target.conn.kind, None, diags);
    let Some(e) = &raw.endpoint else {
        diags.error_at(
            src,
            target.connection.span(),
            "an http source needs `endpoint`",
            Some(
                "the path of the sync API under the connection's url, e.g. `/api/hoso/sync`".into(),
            ),
        );
        return None;
    };
    Some(SourceSpec::Http {
        endpoint: e.get_ref().clone(),
        records: raw.records.as_ref().map(|r| r.get_ref().clone()),
    })
}

/// The limits and tolerances of an extract, defaults filled in.
struct Limits {
    overlap_minutes: i64,
    future_tolerance_minutes: i64,
    quarantine_max_share: f64,
    max_record_bytes: u64,
    max_workbook_bytes: u64,
}

fn limits(
    src: &Source,
    raw: &RawExtract,
    schema: Option<&Schema>,
    diags: &mut Diagnostics,
) -> Limits {
    let value =
        |v: &Option<Spanned<i64>>, default: i64| v.as_ref().map_or(default, |v| *v.get_ref());
    if let Some(o) = &raw.overlap_minutes {
        if *o.get_ref() < 0 {
            diags.error_at(src, o.span(), "overlap_minutes must not be negative", None);
        }
    }
    if let Some(o) = &raw.future_tolerance_minutes {
        if *o.get_ref() < 0 {
            diags.error_at(
                src,
                o.span(),
                "future_tolerance_minutes must not be negative",
                None,
            );
        }
        if schema.is_some_and(|s| s.watermark.is_none()) {
            diags.warning_at(
                src,
                o.span(),
                "the dataset has no watermark column: future_tolerance_minutes checks nothing",
                Some("remove it, or set `watermark` in the dataset's schema".into()),
            );
        }
    }
    if let Some(q) = &raw.quarantine_max_share {
        if !(0.0..=1.0).contains(q.get_ref()) {
            diags.error_at(
                src,
                q.span(),
                "quarantine_max_share is a share between 0 and 1",
                Some("for example 0.05 for 5%".into()),
            );
        }
    }
    Limits {
        overlap_minutes: value(&raw.overlap_minutes, 60),
        future_tolerance_minutes: value(
            &raw.future_tolerance_minutes,
            DEFAULT_FUTURE_TOLERANCE_MINUTES,
        ),
        quarantine_max_share: raw
            .quarantine_max_share
            .as_ref()
            .map_or(0.05, |q| *q.get_ref()),
        max_record_bytes: mib(
            src,
            &raw.max_record_mb,
            "max_record_mb",
            DEFAULT_MAX_RECORD_MB,
            diags,
        ),
        max_workbook_bytes: mib(
            src,
            &raw.max_workbook_mb,
            "max_workbook_mb",
            DEFAULT_MAX_WORKBOOK_MB,
            diags,
        ),
    }
}

/// A size in MiB between 1 and 1048576 (`default` when not written), in bytes.
fn mib(
    src: &Source,
    v: &Option<Spanned<i64>>,
    name: &str,
    default: i64,
    diags: &mut Diagnostics,
) -> u64 {
    let n = v.as_ref().map(|v| *v.get_ref()).unwrap_or(default);
    if let Some(v) = v {
        if !(1..=1 << 20).contains(v.get_ref()) {
            diags.error_at(
                src,
                v.span(),
                format!("{name} is a size in MiB between 1 and 1048576"),
                Some(format!("the default is {default}")),
            );
        }
    }
    n.clamp(1, 1 << 20) as u64 * 1024 * 1024
}

/// A glob that matches no file is a warning: the data may simply not be there yet.
fn check_glob(
    root: &Path,
    conn: &settings::Connection,
    src: &Source,
    p: &Spanned<String>,
    diags: &mut Diagnostics,
) {
    let base = match &conn.root {
        None => root.to_path_buf(),
        Some(r) => match r.resolve() {
            Ok(v) => root.join(v.expose()),
            Err(_) => return, // reported with the connection
        },
    };
    let pattern = base.join(p.get_ref());
    match glob::glob(&pattern.to_string_lossy()) {
        Err(e) => diags.error_at(
            src,
            p.span(),
            format!("invalid glob `{}`: {}", p.get_ref(), e.msg),
            None,
        ),
        Ok(mut paths) => {
            if paths.next().is_none() {
                diags.warning_at(
                    src,
                    p.span(),
                    format!(
                        "no file matches `{}` under `{}`",
                        p.get_ref(),
                        base.display()
                    ),
                    Some("for the demo, generate the files with `parstat demo --data-only`".into()),
                );
            }
        }
    }
}

fn column_map(
    src: &Source,
    raw: &RawExtract,
    schema: &Schema,
    kind: ConnectionKind,
    diags: &mut Diagnostics,
) -> BTreeMap<String, SourceExpr> {
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let mut out = BTreeMap::new();
    let Some(map) = &raw.columns else {
        if matches!(kind, ConnectionKind::File | ConnectionKind::Http) {
            diags.error_at(
                src,
                raw.kind.span(),
                format!(
                    "a {} source needs a `[columns]` table",
                    if kind == ConnectionKind::File {
                        "file"
                    } else {
                        "http"
                    }
                ),
                Some(
                    "map each dataset column to its source field: `dossier_code = \"MaHoSo\"`"
                        .into(),
                ),
            );
        }
        return out;
    };
    // Keys of a table have no span of their own here: point at the value.
    for (col, expr) in map.get_ref() {
        if schema.column(col).is_none() {
            diags.error_at(
                src,
                expr.span(),
                format!("`{col}` is not a column of dataset `{}`", schema.name),
                Some(suggest(col, &names)),
            );
            continue;
        }
        match SourceExpr::parse(expr.get_ref()) {
            Some(e) => {
                out.insert(col.clone(), e);
            }
            None => diags.error_at(
                src,
                expr.span(),
                format!("cannot read source expression `{}`", expr.get_ref()),
                Some("write a field name, `sum(Array[].Field)` or `count(Array)`".into()),
            ),
        }
    }
    for c in &schema.columns {
        if !c.nullable && !map.get_ref().contains_key(&c.name) {
            diags.error_at(
                src,
                map.span(),
                format!(
                    "required column `{}` of dataset `{}` is not mapped",
                    c.name, schema.name
                ),
                Some(format!(
                    "add `{} = \"<source field>\"` to `[columns]`",
                    c.name
                )),
            );
        }
    }
    out
}

fn formats(
    src: &Source,
    raw: &RawExtract,
    schema: &Schema,
    diags: &mut Diagnostics,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(map) = &raw.formats else { return out };
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    for (col, f) in map.get_ref() {
        match schema.column(col) {
            None => diags.error_at(
                src,
                f.span(),
                format!("`{col}` is not a column of dataset `{}`", schema.name),
                Some(suggest(col, &names)),
            ),
            Some(c) if !matches!(c.data_type, DataType::Timestamp(..) | DataType::Date32) => diags
                .error_at(
                    src,
                    f.span(),
                    format!("column `{col}` is not a date or time: it takes no format"),
                    None,
                ),
            Some(_) if !valid_time_format(f.get_ref()) => diags.error_at(
                src,
                f.span(),
                format!("invalid time format `{}`", f.get_ref()),
                Some("use strftime items, e.g. `%Y%m%d%H%M%S` or `%d/%m/%Y`".into()),
            ),
            Some(_) => {
                out.insert(col.clone(), f.get_ref().clone());
            }
        }
    }
    out
}

fn values(
    src: &Source,
    raw: &RawExtract,
    schema: &Schema,
    diags: &mut Diagnostics,
) -> BTreeMap<String, BTreeMap<String, toml::Value>> {
    let mut out = BTreeMap::new();
    let Some(map) = &raw.values else { return out };
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    for (col, table) in map.get_ref() {
        let Some(c) = schema.column(col) else {
            diags.error_at(
                src,
                table.span(),
                format!("`{col}` is not a column of dataset `{}`", schema.name),
                Some(suggest(col, &names)),
            );
            continue;
        };
        if let Some(how) = c.personal {
            // A mapping's source text is written in the pipeline and echoed when a value is
            // not in it: personal data would sit in clear in files, errors and quarantine.
            diags.error_at(
                src,
                table.span(),
                format!(
                    "`{col}` is personal data (`personal = \"{}\"`): it cannot have a value mapping",
                    match how {
                        crate::schema::Personal::Hash => "hash",
                        crate::schema::Personal::Drop => "drop",
                    }
                ),
                Some("remove `[values]` for this column; map values only of non-personal columns".into()),
            );
            continue;
        }
        let mut m = BTreeMap::new();
        for (from, to) in table.get_ref() {
            let v = to.get_ref();
            if !value_fits(c, v) {
                let allowed = c.allowed.as_ref().map(|a| {
                    a.iter()
                        .map(|v| match v {
                            AllowedValue::Int(i) => i.to_string(),
                            AllowedValue::Text(s) => format!("\"{s}\""),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                diags.error_at(
                    src,
                    to.span(),
                    format!(
                        "`{from}` maps to {v}, which column `{col}` ({}) does not accept",
                        c.type_name
                    ),
                    Some(match allowed {
                        Some(a) => format!("allowed values: {a}"),
                        None => format!("write a value of type {}", c.type_name),
                    }),
                );
            } else {
                m.insert(from.clone(), v.clone());
            }
        }
        out.insert(col.clone(), m);
    }
    out
}

/// Whether a mapped value has the column's type and is one of its allowed values.
fn value_fits(c: &Column, v: &toml::Value) -> bool {
    match (&c.data_type, v) {
        (DataType::Boolean, toml::Value::Boolean(_)) => true,
        (DataType::Utf8, toml::Value::String(s)) => c
            .allowed
            .as_ref()
            .is_none_or(|a| a.contains(&AllowedValue::Text(s.clone()))),
        (t, toml::Value::Integer(i)) if t.is_integer() => c
            .allowed
            .as_ref()
            .is_none_or(|a| a.contains(&AllowedValue::Int(*i))),
        _ => false,
    }
}

fn report(
    root: &Path,
    src: &Source,
    raw: &RawReport,
    diags: &mut Diagnostics,
) -> Option<ReportJob> {
    let before = diags.error_count();
    let title = match &raw.title {
        Some(t) => t.get_ref().clone(),
        None => {
            diags.error_at(src, raw.kind.span(), "a report needs `title`", Some("the email subject, e.g. `Báo cáo ... tháng {{ period.month }}/{{ period.year }}`".into()));
            String::new()
        }
    };
    let sql = report_sql(root, src, raw, diags);
    let template = report_template(root, src, raw, diags);
    let period = choice(
        src,
        raw.period.as_ref(),
        "period",
        &[
            ("previous_month", PeriodChoice::PreviousMonth),
            ("current_month", PeriodChoice::CurrentMonth),
        ],
        PeriodChoice::PreviousMonth,
        diags,
    );
    let period_rule = choice(
        src,
        raw.period_rule.as_ref(),
        "period rule",
        &[
            ("calendar", PeriodRule::Calendar),
            ("decree09", PeriodRule::Decree09),
        ],
        PeriodRule::Calendar,
        diags,
    );
    let to = report_to(src, raw, diags);
    let cc = addresses(src, &raw.cc, diags);
    let needs = raw
        .needs
        .as_ref()
        .map(|n| n.get_ref().iter().map(|d| d.get_ref().clone()).collect())
        .unwrap_or_default();
    let compare = report_compare(src, raw, &sql, diags);
    let checks = report_checks(src, raw, diags);
    (diags.error_count() == before).then_some(ReportJob {
        title,
        sql,
        template,
        period,
        period_rule,
        needs,
        to,
        cc,
        compare,
        checks,
        unbounded_rates: raw
            .unbounded_rates
            .as_ref()
            .map(|v| v.get_ref().iter().map(|c| c.get_ref().clone()).collect())
            .unwrap_or_default(),
    })
}

/// `sql`: one or more `.sql` files of the project, each named like a table.
fn report_sql(root: &Path, src: &Source, raw: &RawReport, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut sql = Vec::new();
    let list = match &raw.sql {
        None => {
            diags.error_at(
                src,
                raw.kind.span(),
                "a report needs `sql`",
                Some("list its SQL files: `sql = [\"sql/par/dossier_monthly.sql\"]`".into()),
            );
            return sql;
        }
        Some(list) if list.get_ref().is_empty() => {
            diags.error_at(
                src,
                list.span(),
                "a report needs at least one SQL file",
                None,
            );
            return sql;
        }
        Some(list) => list.get_ref(),
    };
    for f in list {
        let p = PathBuf::from(f.get_ref());
        if p.extension().is_none_or(|e| e != "sql") {
            diags.error_at(
                src,
                f.span(),
                format!("`{}` is not a `.sql` file", f.get_ref()),
                None,
            );
        } else if !root.join(&p).is_file() {
            diags.error_at(
                src,
                f.span(),
                format!("SQL file `{}` not found", f.get_ref()),
                Some("paths are relative to the project folder".into()),
            );
        } else if !is_identifier(&table_name(&p)) {
            diags.error_at(
                src,
                f.span(),
                format!("table name `{}` is not an identifier", table_name(&p)),
                Some("name SQL files with lower-case letters, digits and `_`".into()),
            );
        }
        sql.push(p);
    }
    sql
}

/// `template`: an HTML template of the project with its plain-text twin beside it.
fn report_template(root: &Path, src: &Source, raw: &RawReport, diags: &mut Diagnostics) -> PathBuf {
    let Some(t) = &raw.template else {
        diags.error_at(
            src,
            raw.kind.span(),
            "a report needs `template`",
            Some("for example `template = \"reports/monthly_par.html\"`".into()),
        );
        return PathBuf::new();
    };
    let p = PathBuf::from(t.get_ref());
    if !root.join(&p).is_file() {
        diags.error_at(
            src,
            t.span(),
            format!("template `{}` not found", t.get_ref()),
            Some("paths are relative to the project folder".into()),
        );
    } else if !root.join(p.with_extension("txt")).is_file() {
        diags.error_at(
            src,
            t.span(),
            format!(
                "the plain-text alternative `{}` of template `{}` is not found",
                p.with_extension("txt").display(),
                t.get_ref()
            ),
            Some("every email has a plain-text part with the same figures: add it beside the HTML template".into()),
        );
    }
    p
}

/// `to`: at least one recipient.
fn report_to(src: &Source, raw: &RawReport, diags: &mut Diagnostics) -> Vec<String> {
    match &raw.to {
        None => {
            diags.error_at(
                src,
                raw.kind.span(),
                "a report needs recipients in `to`",
                Some("`to = [\"chu-tich@example.gov.vn\"]`".into()),
            );
            Vec::new()
        }
        Some(list) if list.get_ref().is_empty() => {
            diags.error_at(
                src,
                list.span(),
                "`to` is empty",
                Some("name at least one recipient".into()),
            );
            Vec::new()
        }
        Some(list) => addresses(src, list.get_ref(), diags),
    }
}

/// `[compare]`: table -> key columns; the table must be one of the report's own.
fn report_compare(
    src: &Source,
    raw: &RawReport,
    sql: &[PathBuf],
    diags: &mut Diagnostics,
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let Some(map) = &raw.compare else { return out };
    let tables: Vec<String> = sql.iter().map(|p| table_name(p)).collect();
    let names: Vec<&str> = tables.iter().map(String::as_str).collect();
    for (table, keys) in map.get_ref() {
        // Keys of a TOML table carry no span of their own: point at the table's keys list.
        let span = keys.span();
        if !tables.contains(table) {
            diags.error_at(
                src,
                span,
                format!("`{table}` is not a table of this report"),
                Some(suggest(table, &names)),
            );
            continue;
        }
        let mut cols = Vec::new();
        for k in keys.get_ref() {
            if !is_identifier(k.get_ref()) {
                diags.error_at(
                    src,
                    k.span(),
                    format!("`{}` is not a column name", k.get_ref()),
                    Some("name the columns that identify a row, e.g. `[\"group_kind\", \"group_code\"]`".into()),
                );
            }
            cols.push(k.get_ref().clone());
        }
        out.insert(table.clone(), cols);
    }
    out
}

/// `[[checks]]`: named SQL returning offending rows; names unique.
fn report_checks(src: &Source, raw: &RawReport, diags: &mut Diagnostics) -> Vec<ReportCheck> {
    let mut out: Vec<ReportCheck> = Vec::new();
    let Some(list) = &raw.checks else { return out };
    for c in list.get_ref() {
        let c = c.get_ref();
        let name = c.name.get_ref().trim().to_string();
        if !is_identifier(&name) {
            diags.error_at(
                src,
                c.name.span(),
                format!("check name `{name}` is not an identifier"),
                Some("use lower-case letters, digits and `_`".into()),
            );
        } else if out.iter().any(|o| o.name == name) {
            diags.error_at(
                src,
                c.name.span(),
                format!("duplicate check `{name}`"),
                Some("give each check its own name".into()),
            );
        }
        if c.sql.get_ref().trim().is_empty() {
            diags.error_at(
                src,
                c.sql.span(),
                "a check needs SQL that returns the offending rows",
                None,
            );
        }
        out.push(ReportCheck {
            name,
            sql: c.sql.get_ref().clone(),
            span: c.sql.span(),
            message: c
                .message
                .as_ref()
                .map(|m| m.get_ref().clone())
                .unwrap_or_else(|| "the check's query returned rows".into()),
        });
    }
    out
}

fn addresses(src: &Source, list: &[Spanned<String>], diags: &mut Diagnostics) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for a in list {
        // `${NAME}` is resolved here, so a recipient is a real address before any job runs.
        let Some(s) = settings::resolve_address(src, a, diags) else {
            continue;
        };
        if !seen.insert(s.to_lowercase()) {
            diags.error_at(
                src,
                a.span(),
                format!("duplicate recipient `{s}`"),
                Some("each recipient gets one message: list them once".into()),
            );
        } else {
            out.push(s);
        }
    }
    out
}
