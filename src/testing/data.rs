//! Data tests: the `[[tests]]` of each schema, run as SQL over the warehouse table; each
//! returns the offending rows, so a pass is an empty result.

use std::path::PathBuf;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;

use super::{Outcome, Status};
use crate::config::schema::{AllowedValue, DataTest, DataTestKind, Schema, TestSeverity};
use crate::query::{self, InputTable};

/// The SQL returning what `test` finds wrong in `table`. Grouped kinds (unique, accepted
/// values, relationships) return one row per bad value with its count in `rows`.
pub fn failing_sql(table: &str, schema: &Schema, test: &DataTest) -> String {
    let filter = test.filter.as_deref();
    match &test.kind {
        DataTestKind::Unique(cols) => {
            let c = quote_all(cols);
            format!(
                "SELECT {c}, COUNT(*) AS \"rows\" FROM \"{table}\" {} GROUP BY {c} \
                 HAVING COUNT(*) > 1 ORDER BY \"rows\" DESC, {c}",
                where_clause(filter, "")
            )
        }
        DataTestKind::NotNull(cols) => not_null_sql(table, schema, cols, filter),
        DataTestKind::AcceptedValues { column, values } => {
            accepted_values_sql(table, column, values, filter)
        }
        DataTestKind::Relationship { column, to, field } => format!(
            "SELECT c.\"{column}\", COUNT(*) AS \"rows\" FROM \"{table}\" c \
             LEFT JOIN (SELECT DISTINCT \"{field}\" AS __key FROM \"{to}\") p \
             ON c.\"{column}\" = p.__key {} GROUP BY c.\"{column}\" ORDER BY \"rows\" DESC",
            where_clause(
                filter,
                &format!("c.\"{column}\" IS NOT NULL AND p.__key IS NULL")
            )
        ),
        DataTestKind::RowCount { min, max } => row_count_sql(table, *min, *max, filter),
        DataTestKind::Sql(sql) => sql.clone(),
    }
}

/// The `WHERE` clause of a test's own `filter` joined with the kind's condition `extra`.
fn where_clause(filter: Option<&str>, extra: &str) -> String {
    match (filter, extra.is_empty()) {
        (Some(f), true) => format!("WHERE ({f})"),
        (Some(f), false) => format!("WHERE ({extra}) AND ({f})"),
        (None, true) => String::new(),
        (None, false) => format!("WHERE {extra}"),
    }
}

/// Column names quoted and joined with commas.
fn quote_all(cols: &[String]) -> String {
    cols.iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQL of a not-null test: the rows missing a tested column, shown with their key.
fn not_null_sql(table: &str, schema: &Schema, cols: &[String], filter: Option<&str>) -> String {
    // The key identifies the row; the tested columns show which is missing.
    let mut shown: Vec<String> = schema.primary_key.clone();
    for c in cols {
        if !shown.contains(c) {
            shown.push(c.clone());
        }
    }
    let cond = cols
        .iter()
        .map(|c| format!("\"{c}\" IS NULL"))
        .collect::<Vec<_>>()
        .join(" OR ");
    format!(
        "SELECT {} FROM \"{table}\" {} ORDER BY {}",
        quote_all(&shown),
        where_clause(filter, &cond),
        quote_all(&schema.primary_key)
    )
}

/// The SQL of an accepted-values test: each value outside the list, with its count.
fn accepted_values_sql(
    table: &str,
    column: &str,
    values: &[AllowedValue],
    filter: Option<&str>,
) -> String {
    let list = values
        .iter()
        .map(|v| match v {
            AllowedValue::Int(i) => i.to_string(),
            AllowedValue::Text(s) => format!("'{}'", s.replace('\'', "''")),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT \"{column}\", COUNT(*) AS \"rows\" FROM \"{table}\" {} \
         GROUP BY \"{column}\" ORDER BY \"rows\" DESC",
        where_clause(
            filter,
            &format!("\"{column}\" IS NOT NULL AND \"{column}\" NOT IN ({list})")
        )
    )
}

/// The SQL of a row-count test: the count, when outside its bounds.
fn row_count_sql(table: &str, min: Option<i64>, max: Option<i64>, filter: Option<&str>) -> String {
    let mut bad = Vec::new();
    if let Some(m) = min {
        bad.push(format!("\"rows\" < {m}"));
    }
    if let Some(m) = max {
        bad.push(format!("\"rows\" > {m}"));
    }
    format!(
        "SELECT \"rows\" FROM (SELECT COUNT(*) AS \"rows\" FROM \"{table}\" {}) WHERE {}",
        where_clause(filter, ""),
        bad.join(" OR ")
    )
}

/// How many source rows the result stands for: the `rows` counts of grouped kinds, the
/// number of result rows otherwise.
fn offending_rows(kind: &DataTestKind, batches: &[RecordBatch]) -> u64 {
    let grouped = matches!(
        kind,
        DataTestKind::Unique(_)
            | DataTestKind::AcceptedValues { .. }
            | DataTestKind::Relationship { .. }
    );
    batches
        .iter()
        .map(|b| match (grouped, b.column_by_name("rows")) {
            (true, Some(c)) => c
                .as_primitive_opt::<Int64Type>()
                .map(|a| a.iter().flatten().map(|v| v as u64).sum())
                .unwrap_or(b.num_rows() as u64),
            _ => b.num_rows() as u64,
        })
        .sum()
}

/// Runs every data test of every dataset whose name passes `wanted`.
pub async fn run(
    ctx: &SessionContext,
    inputs: &[InputTable],
    schemas: &std::collections::BTreeMap<String, Schema>,
    params: &[(String, ScalarValue)],
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (name, schema) in schemas {
        let never = inputs
            .iter()
            .any(|i| &i.name == name && i.version.is_none());
        for t in &schema.tests {
            let label = format!("{name}: {}", t.name);
            if !wanted(&label) {
                continue;
            }
            let origin = format!("schemas/{name}.toml:{}", t.line);
            let sql = failing_sql(name, schema, t);
            let status_bad = match t.severity {
                TestSeverity::Error => Status::Fail,
                TestSeverity::Warn => Status::Warn,
            };
            let outcome = match query::run_sql(ctx, &origin, &sql, params).await {
                Err(e) => Outcome {
                    label,
                    origin: PathBuf::from(&origin),
                    status: Status::Fail,
                    detail: format!("the test's SQL failed: {e}"),
                },
                Ok((_, batches)) => {
                    let n = offending_rows(&t.kind, &batches);
                    let rows_out: usize = batches.iter().map(|b| b.num_rows()).sum();
                    if rows_out == 0 {
                        Outcome {
                            label,
                            origin: PathBuf::from(&origin),
                            status: Status::Pass,
                            detail: String::new(),
                        }
                    } else {
                        let mut detail = match &t.kind {
                            DataTestKind::RowCount { .. } => {
                                format!(
                                    "{} row(s) in the table, outside the bounds",
                                    first_count(&batches)
                                )
                            }
                            _ => format!("{n} offending row(s)"),
                        };
                        if never {
                            detail.push_str(&format!(
                                " (table `{name}` was never extracted: run `parstat extract`)"
                            ));
                        }
                        detail.push('\n');
                        detail.push_str(&query::sample(&batches, 5));
                        Outcome {
                            label,
                            origin: PathBuf::from(&origin),
                            status: status_bad,
                            detail,
                        }
                    }
                }
            };
            out.push(outcome);
        }
    }
    out
}

fn first_count(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<Int64Type>()
                .map(|a| a.value(0))
        })
        .unwrap_or_default()
}
