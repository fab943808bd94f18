//! The schema's row rules (SQL predicates such as `finished_at IS NULL OR finished_at >=
//! received_at`), evaluated by DataFusion on each typed batch. A rule fails a row when it is
//! false; unknown (NULL) passes, as SQL CHECK constraints do.

use arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::common::DFSchema;
use datafusion::prelude::SessionContext;

use super::ExtractError;
use crate::config::schema::Schema;

/// For each rule of the schema, the indices of the rows it fails.
pub fn evaluate(schema: &Schema, batch: &RecordBatch) -> Result<Vec<Vec<usize>>, ExtractError> {
    let mut out = vec![Vec::new(); schema.rules.len()];
    if schema.rules.is_empty() || batch.num_rows() == 0 {
        return Ok(out);
    }
    let ctx = SessionContext::new();
    let df_schema = DFSchema::try_from(batch.schema().as_ref().clone())
        .map_err(|e| ExtractError::Config(e.to_string()))?;
    for (rule, failed) in schema.rules.iter().zip(out.iter_mut()) {
        let bad = |e: datafusion::error::DataFusionError| {
            ExtractError::Config(format!(
                "schemas/{}.toml: rule `{}` ({}): {e}",
                schema.name, rule.name, rule.check
            ))
        };
        let expr = ctx.parse_sql_expr(&rule.check, &df_schema).map_err(bad)?;
        let phys = ctx.create_physical_expr(expr, &df_schema).map_err(bad)?;
        let value = phys
            .evaluate(batch)
            .map_err(bad)?
            .into_array(batch.num_rows())
            .map_err(bad)?;
        let result = value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                ExtractError::Config(format!(
                    "schemas/{}.toml: rule `{}` is not a true/false condition",
                    schema.name, rule.name
                ))
            })?;
        for i in 0..result.len() {
            if result.is_valid(i) && !result.value(i) {
                failed.push(i);
            }
        }
    }
    Ok(out)
}
