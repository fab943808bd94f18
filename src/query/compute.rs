//! Computing a report for one period: its SQL files read once, run in waves of files that do
//! not depend on one another with the period's parameters bound, then the previous period's
//! values joined in and the checks run.

use std::collections::BTreeSet;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

use super::checks::{run_checks, CheckOutcome};
use super::compare::{add_previous, previous_values};
use super::session::{register_batches, session_with, InputTable, Inputs};
use super::sql::{named_tables, run_sql};
use super::{period, published_name, Period, QueryError};
use crate::config::pipeline::{Pipeline, ReportJob};
use crate::config::Project;
use crate::warehouse::{self, Warehouse};

/// One result table of a report.
#[derive(Debug, Clone)]
pub struct ResultTable {
    pub name: String,
    pub sql_file: PathBuf,
    /// SHA-256 of the SQL file's text, for the provenance footer.
    pub sql_sha256: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl ResultTable {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
    /// No row at all: the report says "no data" rather than printing zeros.
    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }
}

/// Everything a report computed for one period.
#[derive(Debug, Clone)]
pub struct Computed {
    pub report: String,
    pub period: Period,
    pub tables: Vec<ResultTable>,
    pub checks: Vec<CheckOutcome>,
    pub inputs: Vec<InputTable>,
}

impl Computed {
    pub fn table(&self, name: &str) -> Option<&ResultTable> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// The typed parameters bound to every SQL file for `period`.
pub fn params(period: &Period, tz: chrono_tz::Tz) -> Vec<(String, ScalarValue)> {
    let (t0, t1) = period.bounds(tz);
    let ts = |t: chrono::DateTime<chrono::Utc>| {
        ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
    };
    let date = |d: chrono::NaiveDate| {
        ScalarValue::Date32(Some(
            (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32,
        ))
    };
    let text = |s: String| ScalarValue::Utf8(Some(s));
    let year_start = chrono::NaiveDate::from_ymd_opt(period.year, 1, 1).expect("1 January");
    let first = period.first_day();
    vec![
        ("period".into(), text(period.label())),
        ("period_rule".into(), text(period.rule_name().into())),
        ("period_start".into(), ts(t0)),
        ("period_end".into(), ts(t1)),
        ("period_start_date".into(), date(first)),
        ("period_end_date".into(), date(period.end_day())),
        (
            "period_start_month".into(),
            text(format!("{}", first.format("%Y-%m"))),
        ),
        (
            "period_year".into(),
            ScalarValue::Int64(Some(period.year as i64)),
        ),
        (
            "year_start".into(),
            ts(period::local_midnight(year_start, tz)),
        ),
        ("year_start_date".into(), date(year_start)),
        ("prev_period".into(), text(period.previous().label())),
        ("trend_from".into(), text(period.offset(-11).label())),
    ]
}

/// A report's SQL files, read once per computation: (file, result table, SQL text) in the
/// pipeline's order, and the tables they, the checks and the comparison name.
pub(super) struct SqlFiles {
    files: Vec<(PathBuf, String, String)>,
    pub(super) names: BTreeSet<String>,
}

fn read_files(project: &Project, report: &ReportJob) -> Result<SqlFiles, QueryError> {
    let mut files = Vec::new();
    for file in &report.sql {
        let path = project.root.join(file);
        let sql = std::fs::read_to_string(&path).map_err(|source| QueryError::Io {
            path: path.clone(),
            source,
        })?;
        files.push((file.clone(), crate::config::pipeline::table_name(file), sql));
    }
    let mut names = named_tables(
        files
            .iter()
            .map(|(_, _, sql)| sql.as_str())
            .chain(report.checks.iter().map(|c| c.sql.as_str())),
    );
    // The comparison reads what was published for the previous period.
    names.extend(report.compare.keys().map(|t| published_name(t)));
    Ok(SqlFiles { files, names })
}

/// Computes every table of `report` for `period`: the SQL files in order (each result is a
/// table the later files can read), then the previous-period values, then the checks. A
/// failed check is an error: nothing computed here may be published.
pub async fn compute(
    project: &Project,
    wh: &Warehouse,
    pipeline: &Pipeline,
    period: Period,
) -> Result<Computed, QueryError> {
    compute_with(project, Inputs::Warehouse(wh), pipeline, period).await
}

/// [`compute`] over any inputs: report unit tests compute from tables held in memory.
pub async fn compute_with(
    project: &Project,
    source: Inputs<'_>,
    pipeline: &Pipeline,
    period: Period,
) -> Result<Computed, QueryError> {
    let report = pipeline
        .as_report()
        .expect("compute is called for report pipelines");
    let sql = read_files(project, report)?;
    let started = std::time::Instant::now();
    let phase = |what: &str| tracing::debug!(seconds = started.elapsed().as_secs_f64(), "{what}");
    let (ctx, inputs) = session_with(project, source, Some(&sql.names)).await?;
    phase("session ready");
    // What was published before this run, known before the SQL files register an empty
    // history for the tables that have none.
    let published: BTreeSet<String> = report
        .compare
        .keys()
        .filter(|t| ctx.table_exist(published_name(t).as_str()).unwrap_or(false))
        .cloned()
        .collect();
    // The previous period's values are read while the SQL files run: neither needs the other.
    let (mut tables, previous) = futures_util::future::try_join(
        run_files(project, &ctx, &sql, &period),
        previous_values(project, source, &ctx, report, &sql, &period, &published),
    )
    .await?;
    phase("sql files and previous values computed");
    add_previous(&ctx, report, &mut tables, previous).await?;
    let checks = run_checks(&ctx, &tables, report, &period, project).await?;
    phase("checks run");
    let failed: Vec<CheckOutcome> = checks.iter().filter(|c| !c.passed).cloned().collect();
    if !failed.is_empty() {
        return Err(QueryError::ChecksFailed {
            report: pipeline.name.clone(),
            period: period.to_string(),
            failed,
        });
    }
    Ok(Computed {
        report: pipeline.name.clone(),
        period,
        tables,
        checks,
        inputs,
    })
}

/// Runs the report's SQL files. A file reads the tables of the files before it that it names
/// (or their `published_` history); files that do not depend on one another run at the same
/// time, in waves, so that small queries overlap the big scans. Results keep the file order.
pub(super) async fn run_files(
    project: &Project,
    ctx: &SessionContext,
    sql: &SqlFiles,
    period: &Period,
) -> Result<Vec<ResultTable>, QueryError> {
    let params = params(period, project.settings.timezone);
    let deps = dependencies(&sql.files);
    let mut done: Vec<Option<ResultTable>> = sql.files.iter().map(|_| None).collect();
    while done.iter().any(|d| d.is_none()) {
        let wave: Vec<usize> = (0..sql.files.len())
            .filter(|&i| done[i].is_none() && deps[i].iter().all(|&j| done[j].is_some()))
            .collect();
        let runs = wave.iter().map(|&i| {
            let (file, name, text) = &sql.files[i];
            let origin = file.display().to_string();
            let params = &params;
            async move {
                let started = std::time::Instant::now();
                let out = run_sql(ctx, &origin, text, params).await;
                tracing::debug!(table = %name, seconds = started.elapsed().as_secs_f64(), "computed");
                out
            }
        });
        let outs = futures_util::future::join_all(runs).await;
        // The wave's results are registered once it is over, in the files' order.
        for (&i, out) in wave.iter().zip(outs) {
            let (file, name, text) = &sql.files[i];
            let (schema, batches) = out?;
            done[i] = Some(register_result(ctx, file, name, text, schema, batches)?);
        }
    }
    Ok(done.into_iter().flatten().collect())
}

/// For each file, the earlier files whose table (or its `published_` history) it names.
fn dependencies(files: &[(PathBuf, String, String)]) -> Vec<Vec<usize>> {
    files
        .iter()
        .enumerate()
        .map(|(i, (_, _, sql))| {
            let words = named_tables([sql.as_str()]);
            (0..i)
                .filter(|&j| {
                    let n = &files[j].1;
                    words.contains(n) || words.contains(&published_name(n))
                })
                .collect()
        })
        .collect()
}

/// Registers a SQL file's result as table `name` for the files after it.
fn register_result(
    ctx: &SessionContext,
    file: &std::path::Path,
    name: &str,
    sql: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<ResultTable, QueryError> {
    register_batches(ctx, name, schema.clone(), batches.clone())?;
    // A report table whose history is not published yet reads as empty, so that trend
    // queries over `published_<table>` work from the first run on.
    let pname = published_name(name);
    if !ctx.table_exist(pname.as_str()).unwrap_or(false) {
        register_batches(ctx, &pname, warehouse::published::schema(&schema), vec![])?;
    }
    Ok(ResultTable {
        name: name.to_string(),
        sql_file: file.to_path_buf(),
        sql_sha256: sha256_hex(sql),
        schema,
        batches,
    })
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pipeline::PeriodRule;

    fn param<'a>(ps: &'a [(String, ScalarValue)], name: &str) -> &'a ScalarValue {
        &ps.iter().find(|(k, _)| k == name).expect(name).1
    }

    #[test]
    fn params_of_a_calendar_month_in_local_time() {
        let tz: chrono_tz::Tz = "Asia/Ho_Chi_Minh".parse().unwrap();
        let p = Period::parse("2026-01", PeriodRule::Calendar).unwrap();
        let ps = params(&p, tz);
        let names: Vec<_> = ps.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "period",
                "period_rule",
                "period_start",
                "period_end",
                "period_start_date",
                "period_end_date",
                "period_start_month",
                "period_year",
                "year_start",
                "year_start_date",
                "prev_period",
                "trend_from",
            ]
        );
        let text = |s: &str| ScalarValue::Utf8(Some(s.into()));
        assert_eq!(param(&ps, "period"), &text("2026-01"));
        assert_eq!(param(&ps, "period_rule"), &text(p.rule_name()));
        assert_eq!(param(&ps, "period_start_month"), &text("2026-01"));
        assert_eq!(param(&ps, "prev_period"), &text("2025-12"));
        assert_eq!(param(&ps, "trend_from"), &text("2025-02"));
        assert_eq!(param(&ps, "period_year"), &ScalarValue::Int64(Some(2026)));
        // Local midnight of 1 January 2026 in Hanoi is 17:00 UTC the day before.
        let micros = |s: &str| {
            let t = chrono::DateTime::parse_from_rfc3339(s).unwrap();
            ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
        };
        assert_eq!(
            param(&ps, "period_start"),
            &micros("2025-12-31T17:00:00+00:00")
        );
        assert_eq!(
            param(&ps, "period_end"),
            &micros("2026-01-31T17:00:00+00:00")
        );
        assert_eq!(
            param(&ps, "year_start"),
            &micros("2025-12-31T17:00:00+00:00")
        );
        // Days since 1970-01-01: 2026-01-01 is day 20454.
        assert_eq!(
            param(&ps, "period_start_date"),
            &ScalarValue::Date32(Some(20454))
        );
        // The end is exclusive: 1 February.
        assert_eq!(
            param(&ps, "period_end_date"),
            &ScalarValue::Date32(Some(20454 + 31))
        );
        assert_eq!(
            param(&ps, "year_start_date"),
            &ScalarValue::Date32(Some(20454))
        );
    }

    #[test]
    fn params_of_a_decree09_period_start_in_the_month_before() {
        let p = Period::parse("2026-10", PeriodRule::Decree09).unwrap();
        let ps = params(&p, chrono_tz::UTC);
        let start = p.first_day();
        assert_eq!(start.to_string(), "2026-09-15");
        assert_eq!(
            param(&ps, "period_start_month"),
            &ScalarValue::Utf8(Some("2026-09".into()))
        );
        assert_eq!(
            param(&ps, "period"),
            &ScalarValue::Utf8(Some("2026-10".into()))
        );
    }

    #[test]
    fn a_file_waits_for_the_earlier_files_it_names() {
        let f = |name: &str, sql: &str| {
            (
                PathBuf::from(format!("{name}.sql")),
                name.to_string(),
                sql.to_string(),
            )
        };
        let files = [
            f("a", "SELECT 1 AS x"),
            f("b", "SELECT * FROM dossier"),
            f("c", "SELECT * FROM a JOIN published_b ON true -- not d"),
            f("d", "SELECT * FROM c, a"),
        ];
        assert_eq!(
            dependencies(&files),
            [vec![], vec![], vec![0, 1], vec![0, 2]]
        );
    }

    #[test]
    fn the_sha256_of_a_files_text_is_lowercase_hex() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
