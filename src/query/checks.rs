//! The publish checks a report's tables must pass before anything is published: every
//! `*_rate` column within 0..100, then the report's own checks (SQL returning offending rows).

use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;

use super::compare::is_measure;
use super::compute::{params, ResultTable};
use super::sql::{run_sql, sample};
use super::{Period, QueryError};
use crate::config::pipeline::ReportJob;
use crate::config::Project;

/// The outcome of one publish check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckOutcome {
    pub name: String,
    pub message: String,
    pub passed: bool,
    pub offending: usize,
    /// The first offending rows, as a text table.
    pub sample: String,
}

/// The text of [`QueryError::ChecksFailed`]: each failed check with its offending rows.
pub(super) fn checks_failed_text(report: &str, period: &str, failed: &[CheckOutcome]) -> String {
    let mut s = format!(
        "report `{report}` for {period} was not published: {} check(s) failed",
        failed.len()
    );
    for c in failed {
        s.push_str(&format!(
            "\n\ncheck `{}` failed on {} row(s): {}\n{}",
            c.name, c.offending, c.message, c.sample
        ));
    }
    s.push_str("\n\nhelp: fix the source data or the SQL, then rerun the report");
    s
}

/// The checks: every `*_rate` column within 0..100, then the report's own checks (SQL that
/// returns the offending rows).
pub(super) async fn run_checks(
    ctx: &SessionContext,
    tables: &[ResultTable],
    report: &ReportJob,
    period: &Period,
    project: &Project,
) -> Result<Vec<CheckOutcome>, QueryError> {
    let params = params(period, project.settings.timezone);
    // (name, message, SQL) of each check, run at the same time below.
    let mut checks: Vec<(String, String, String)> = tables
        .iter()
        .filter_map(|t| rate_check(t, &report.unbounded_rates))
        .collect();
    for c in &report.checks {
        checks.push((c.name.clone(), c.message.clone(), c.sql.clone()));
    }
    futures_util::future::try_join_all(
        checks
            .iter()
            .map(|(name, message, sql)| check(ctx, name, message, sql, &params)),
    )
    .await
}

/// The (name, message, SQL) of the check that `t`'s `*_rate` measures (but the `unbounded`
/// ones) lie within 0..100; none when it has no such column.
fn rate_check(t: &ResultTable, unbounded: &[String]) -> Option<(String, String, String)> {
    let rates: Vec<String> = t
        .schema
        .fields()
        .iter()
        .filter(|f| {
            f.name().ends_with("_rate")
                && is_measure(f.data_type())
                && !unbounded.contains(f.name())
        })
        .map(|f| f.name().clone())
        .collect();
    if rates.is_empty() {
        return None;
    }
    let cond = rates
        .iter()
        .map(|r| format!("\"{r}\" < 0 OR \"{r}\" > 100"))
        .collect::<Vec<_>>()
        .join(" OR ");
    Some((
        format!("{}_rates_within_0_100", t.name),
        format!(
            "rates of `{}` must lie within 0..100 ({})",
            t.name,
            rates.join(", ")
        ),
        format!("SELECT * FROM {} WHERE {cond}", t.name),
    ))
}

/// Runs one check: it passes when its SQL returns no row.
async fn check(
    ctx: &SessionContext,
    name: &str,
    message: &str,
    sql: &str,
    params: &[(String, ScalarValue)],
) -> Result<CheckOutcome, QueryError> {
    let (_, batches) = run_sql(ctx, &format!("check `{name}`"), sql, params).await?;
    let offending: usize = batches.iter().map(|b| b.num_rows()).sum();
    let sample = if offending == 0 {
        String::new()
    } else {
        sample(&batches, 10)
    };
    Ok(CheckOutcome {
        name: name.to_string(),
        message: message.to_string(),
        passed: offending == 0,
        offending,
        sample,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    fn table(columns: &[(&str, DataType)]) -> ResultTable {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect();
        ResultTable {
            name: "par".into(),
            sql_file: "sql/par.sql".into(),
            sql_sha256: String::new(),
            schema: std::sync::Arc::new(Schema::new(fields)),
            batches: vec![],
        }
    }

    #[test]
    fn numeric_rates_but_the_unbounded_lie_within_0_100() {
        let t = table(&[
            ("area", DataType::Utf8),
            ("late_rate", DataType::Float64),
            ("code_rate", DataType::Utf8),
            ("growth_rate", DataType::Decimal128(9, 2)),
            ("on_time_rate", DataType::Int64),
        ]);
        let (name, message, sql) = rate_check(&t, &["growth_rate".into()]).unwrap();
        assert_eq!(name, "par_rates_within_0_100");
        assert_eq!(
            message,
            "rates of `par` must lie within 0..100 (late_rate, on_time_rate)"
        );
        assert_eq!(
            sql,
            "SELECT * FROM par WHERE \"late_rate\" < 0 OR \"late_rate\" > 100 OR \"on_time_rate\" < 0 OR \"on_time_rate\" > 100"
        );
        assert!(rate_check(
            &t,
            &[
                "late_rate".into(),
                "on_time_rate".into(),
                "growth_rate".into()
            ]
        )
        .is_none());
        assert!(rate_check(&table(&[("n", DataType::Int64)]), &[]).is_none());
    }

    #[test]
    fn the_failed_checks_text_lists_each_with_its_rows() {
        let failed = [CheckOutcome {
            name: "no_negative".into(),
            message: "counts are not negative".into(),
            passed: false,
            offending: 2,
            sample: "+---+\n| n |\n+---+".into(),
        }];
        assert_eq!(
            checks_failed_text("monthly_par", "2026-10", &failed),
            "report `monthly_par` for 2026-10 was not published: 1 check(s) failed\n\n\
             check `no_negative` failed on 2 row(s): counts are not negative\n+---+\n| n |\n+---+\n\n\
             help: fix the source data or the SQL, then rerun the report"
        );
    }
}
