//! The schema's row rules (SQL predicates such as `finished_at IS NULL OR finished_at >=
//! received_at`), evaluated by DataFusion on each typed batch. A rule fails a row when it is
//! false; unknown (NULL) passes, as SQL CHECK constraints do.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::datatypes::Schema as ArrowSchema;
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use super::ExtractError;
use crate::config::schema::Schema;

/// A schema's rules, planned once for the run: a load evaluates them on every message of
/// rows, and a session and a plan per message would cost more than the evaluation.
pub struct Rules {
    dataset: String,
    /// (rule name, planned predicate), in the schema's order.
    planned: Vec<(String, Arc<dyn PhysicalExpr>)>,
}

impl Rules {
    /// Plans `schema`'s rules over the typed batches' `arrow` schema.
    pub fn plan(schema: &Schema, arrow: &ArrowSchema) -> Result<Rules, ExtractError> {
        let mut planned = Vec::with_capacity(schema.rules.len());
        if !schema.rules.is_empty() {
            let ctx = SessionContext::new();
            let df_schema = DFSchema::try_from(arrow.clone())
                .map_err(|e| ExtractError::Config(e.to_string()))?;
            for rule in &schema.rules {
                let bad = |e: datafusion::error::DataFusionError| {
                    ExtractError::Config(format!(
                        "schemas/{}.toml: rule `{}` ({}): {e}",
                        schema.name, rule.name, rule.check
                    ))
                };
                let expr = ctx.parse_sql_expr(&rule.check, &df_schema).map_err(bad)?;
                let phys = ctx.create_physical_expr(expr, &df_schema).map_err(bad)?;
                if phys.data_type(arrow).map_err(bad)? != arrow::datatypes::DataType::Boolean {
                    return Err(ExtractError::Config(format!(
                        "schemas/{}.toml: rule `{}` ({}) is not a true/false condition",
                        schema.name, rule.name, rule.check
                    )));
                }
                planned.push((rule.name.clone(), phys));
            }
        }
        Ok(Rules {
            dataset: schema.name.clone(),
            planned,
        })
    }

    /// For each rule, the indices of the rows of `batch` it fails.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<Vec<usize>>, ExtractError> {
        let mut out = vec![Vec::new(); self.planned.len()];
        if batch.num_rows() == 0 {
            return Ok(out);
        }
        for ((name, phys), failed) in self.planned.iter().zip(out.iter_mut()) {
            let bad = |e: datafusion::error::DataFusionError| {
                ExtractError::Config(format!("schemas/{}.toml: rule `{name}`: {e}", self.dataset))
            };
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
                        "schemas/{}.toml: rule `{name}` is not a true/false condition",
                        self.dataset
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
}
