//! The previous-period comparison: each compared table's values for the period before (as
//! published, or computed again when nothing was), joined in as `<measure>_prev` columns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use datafusion::prelude::SessionContext;

use super::compute::{params, run_files, ResultTable, SqlFiles};
use super::session::{register_batches, session_with, Inputs};
use super::sql::{collect_plain, run_sql};
use super::{published_name, Period, QueryError, SqlCause};
use crate::config::pipeline::ReportJob;
use crate::config::Project;

/// The previous period's values of each compared table: what was published for it (the
/// tables of `published` have a history), or, when nothing was, the same SQL computed for that
/// period (not published).
pub(super) async fn previous_values(
    project: &Project,
    source: Inputs<'_>,
    ctx: &SessionContext,
    report: &ReportJob,
    sql: &SqlFiles,
    period: &Period,
    published: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<RecordBatch>>, QueryError> {
    let prev = period.previous();
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for table in report.compare.keys() {
        let pname = published_name(table);
        if published.contains(table) {
            let (_, batches) = run_sql(
                ctx,
                &pname,
                &format!(
                    "SELECT * FROM {pname} WHERE period = $prev_period AND period_rule = $period_rule"
                ),
                &params(period, project.settings.timezone),
            )
            .await?;
            if batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0 {
                out.insert(table.clone(), batches);
                continue;
            }
        }
        missing.push(table.clone());
    }
    if !missing.is_empty() {
        tracing::debug!(period = %prev, tables = ?missing, "previous period not published; computing it for the comparison");
        let (pctx, _) = session_with(project, source, Some(&sql.names)).await?;
        let tables = run_files(project, &pctx, sql, &prev).await?;
        for t in tables {
            if missing.contains(&t.name) {
                out.insert(t.name, t.batches);
            }
        }
    }
    Ok(out)
}

/// Joins `previous` into each compared table of `tables`, and registers the table again with
/// its `_prev` columns for the checks.
pub(super) async fn add_previous(
    ctx: &SessionContext,
    report: &ReportJob,
    tables: &mut [ResultTable],
    previous: BTreeMap<String, Vec<RecordBatch>>,
) -> Result<(), QueryError> {
    if report.compare.is_empty() {
        return Ok(());
    }
    for t in tables.iter_mut() {
        let Some(keys) = report.compare.get(&t.name) else {
            continue;
        };
        let prev = previous.get(&t.name).cloned().unwrap_or_default();
        let batches = join_previous(t, keys, prev).await?;
        t.batches = batches;
        t.schema = t
            .batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| t.schema.clone());
        register_batches(ctx, &t.name, t.schema.clone(), t.batches.clone())?;
    }
    Ok(())
}

/// Whether a column of type `t` is a measure: a number.
pub(super) fn is_measure(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Decimal128(_, _))
}

/// Adds `<measure>_prev` after the current columns: every numeric column that is not a key,
/// matched on the keys (NULL keys match NULL keys). Row order is kept.
async fn join_previous(
    t: &ResultTable,
    keys: &[String],
    prev: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = SessionContext::new();
    let origin = format!("{} (previous period)", t.sql_file.display());
    let err = |e: SqlCause| QueryError::Sql {
        file: origin.clone(),
        source: e,
    };
    let (nschema, numbered) = number_rows(t).map_err(|e| err(e.into()))?;
    register_batches(&ctx, "__cur", nschema, numbered)?;
    let prev_schema = prev
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| t.schema.clone());
    register_batches(&ctx, "__prev", prev_schema.clone(), prev)?;
    let select = previous_columns(t, keys, &prev_schema);
    for k in keys {
        if prev_schema.field_with_name(k).is_err() || t.schema.field_with_name(k).is_err() {
            return Err(err(format!(
                "compare key `{k}` is not a column of `{}`",
                t.name
            )
            .into()));
        }
    }
    let sql = format!(
        "SELECT {} FROM __cur c LEFT JOIN __prev p ON {} ORDER BY c.__row",
        select.join(", "),
        join_on(keys)
    );
    let df = parstat_plan::sql(&ctx, &sql)
        .await
        .map_err(|e| err(e.into()))?;
    let df = parstat_plan::drop_columns(df, &["__row"]).map_err(|e| err(e.into()))?;
    let (plain, out) = collect_plain(df).await.map_err(err)?;
    if out.is_empty() {
        return Ok(vec![RecordBatch::new_empty(plain)]);
    }
    Ok(out)
}

/// The current rows with a `__row` column numbering them, to restore their order after the
/// join.
fn number_rows(t: &ResultTable) -> Result<(SchemaRef, Vec<RecordBatch>), arrow::error::ArrowError> {
    let mut fields: Vec<Field> = t
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("__row", DataType::UInt64, false));
    let nschema = Arc::new(ArrowSchema::new(fields));
    let mut numbered = Vec::new();
    let mut offset = 0u64;
    for b in &t.batches {
        let n = b.num_rows() as u64;
        let mut cols = b.columns().to_vec();
        cols.push(Arc::new(UInt64Array::from_iter_values(offset..offset + n)));
        offset += n;
        numbered.push(RecordBatch::try_new(nschema.clone(), cols)?);
    }
    Ok((nschema, numbered))
}

/// The join's select list: every current column (`c.*`), then `<measure>_prev` for each
/// measure that is not a key and that the SQL did not compute itself; NULL of its type when
/// the previous values lack the column.
fn previous_columns(t: &ResultTable, keys: &[String], prev_schema: &SchemaRef) -> Vec<String> {
    let mut select = vec!["c.*".to_string()];
    for f in t.schema.fields() {
        let n = f.name();
        if keys.contains(n) || n.ends_with("_prev") || !is_measure(f.data_type()) {
            continue;
        }
        let prev_col = format!("{n}_prev");
        if t.schema.field_with_name(&prev_col).is_ok() {
            // The SQL computed it itself.
            continue;
        }
        if prev_schema.field_with_name(n).is_ok() {
            select.push(format!("p.{} AS {}", quoted(n), quoted(&prev_col)));
        } else {
            select.push(format!(
                "CAST(NULL AS {}) AS {}",
                sql_type(f.data_type()),
                quoted(&prev_col)
            ));
        }
    }
    select
}

/// The join condition: every key equal, NULL matching NULL; every row when there is no key.
fn join_on(keys: &[String]) -> String {
    if keys.is_empty() {
        "TRUE".to_string()
    } else {
        keys.iter()
            .map(|k| format!("(c.{} IS NOT DISTINCT FROM p.{})", quoted(k), quoted(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

/// `c` as a quoted SQL identifier.
fn quoted(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

/// The SQL type a NULL `<measure>_prev` is cast to, for a measure of type `t`.
fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Float32 | DataType::Float64 => "DOUBLE".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "INT".into(),
        _ => "BIGINT".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};

    #[test]
    fn measures_are_numbers() {
        for t in [
            DataType::Int8,
            DataType::Int64,
            DataType::UInt32,
            DataType::Float64,
            DataType::Decimal128(18, 2),
        ] {
            assert!(is_measure(&t), "{t}");
        }
        for t in [DataType::Utf8, DataType::Boolean, DataType::Date32] {
            assert!(!is_measure(&t), "{t}");
        }
    }

    #[test]
    fn a_missing_previous_value_is_a_null_of_the_measures_sql_type() {
        assert_eq!(sql_type(&DataType::Decimal128(18, 2)), "DECIMAL(18,2)");
        assert_eq!(sql_type(&DataType::Float32), "DOUBLE");
        assert_eq!(sql_type(&DataType::Float64), "DOUBLE");
        assert_eq!(sql_type(&DataType::Int8), "INT");
        assert_eq!(sql_type(&DataType::Int32), "INT");
        assert_eq!(sql_type(&DataType::Int64), "BIGINT");
    }

    #[test]
    fn keys_match_null_to_null_and_names_are_quoted() {
        assert_eq!(join_on(&[]), "TRUE");
        assert_eq!(
            join_on(&["area".into(), "a\"b".into()]),
            "(c.\"area\" IS NOT DISTINCT FROM p.\"area\") AND (c.\"a\"\"b\" IS NOT DISTINCT FROM p.\"a\"\"b\")"
        );
    }

    fn table() -> ResultTable {
        let batch = RecordBatch::try_from_iter([
            (
                "area",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as _,
            ),
            ("n", Arc::new(Int32Array::from(vec![1, 2, 3])) as _),
            ("total", Arc::new(Int64Array::from(vec![10, 20, 30])) as _),
            (
                "total_prev",
                Arc::new(Int64Array::from(vec![9, 19, 29])) as _,
            ),
            ("late_rate", Arc::new(Int64Array::from(vec![5, 6, 7])) as _),
        ])
        .unwrap();
        ResultTable {
            name: "t".into(),
            sql_file: "sql/t.sql".into(),
            sql_sha256: String::new(),
            schema: batch.schema(),
            batches: vec![batch.slice(0, 2), batch.slice(2, 1)],
        }
    }

    #[test]
    fn previous_columns_skip_keys_text_and_what_the_sql_computed() {
        let t = table();
        let prev = Arc::new(ArrowSchema::new(vec![
            Field::new("area", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
        ]));
        assert_eq!(
            previous_columns(&t, &["area".into()], &prev),
            [
                "c.*",
                "p.\"n\" AS \"n_prev\"",
                "CAST(NULL AS BIGINT) AS \"late_rate_prev\"",
            ]
        );
    }

    #[test]
    fn rows_are_numbered_across_batches() {
        let (schema, batches) = number_rows(&table()).unwrap();
        assert_eq!(schema.fields().last().unwrap().name(), "__row");
        let rows: Vec<u64> = batches
            .iter()
            .flat_map(|b| {
                let c = b.column(b.num_columns() - 1);
                let c = c.as_any().downcast_ref::<UInt64Array>().unwrap();
                c.values().to_vec()
            })
            .collect();
        assert_eq!(rows, [0, 1, 2]);
    }

    #[tokio::test]
    async fn previous_values_join_on_the_keys_in_the_current_order() {
        let t = table();
        let prev = RecordBatch::try_from_iter([
            ("area", Arc::new(StringArray::from(vec!["c", "a"])) as _),
            ("n", Arc::new(Int32Array::from(vec![30, 10])) as _),
        ])
        .unwrap();
        let out = join_previous(&t, &["area".into()], vec![prev])
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&out)
            .unwrap()
            .to_string();
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(
            rows,
            [
                "| area | n | total | total_prev | late_rate | n_prev | late_rate_prev |",
                "| a    | 1 | 10    | 9          | 5         | 10     |                |",
                "| b    | 2 | 20    | 19         | 6         |        |                |",
                "| c    | 3 | 30    | 29         | 7         | 30     |                |",
            ]
        );
        let e = join_previous(&t, &["zone".into()], vec![])
            .await
            .expect_err("an unknown key");
        assert_eq!(
            e.to_string(),
            "sql/t.sql (previous period): error: compare key `zone` is not a column of `t`"
        );
    }
}
