//! How the scheduler plans: Ballista's defaults with its static planner, and constant rows
//! held as in-memory scans, the two shapes in which Ballista 55 slices a UNION correctly.

use std::sync::Arc;

use arrow::array::new_null_array;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use ballista::prelude::SessionConfigExt;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::ScalarValue;
use datafusion::config::ConfigOptions;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;

/// The scheduler's session for a client's `config`, whatever planner the client asked for.
///
/// Ballista 55's adaptive planner (its default) gives each task a slice of a UNION's
/// partitions without cutting a stage under a branch that cannot be sliced (one sorted or
/// coalesced partition): the task reruns that branch instead of its own, and rows are lost or
/// doubled (seen here: trend_monthly published without its row). The static planner cuts
/// that stage (Ballista issue 2184).
pub fn session(config: SessionConfig) -> Result<SessionState> {
    let config = config.with_ballista_adaptive_query_planner(false);
    let state = ballista_core::utils::default_session_builder(config)?;
    Ok(SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rule(Arc::new(ConstantRowsInMemory))
        .build())
}

/// Replaces each `PlaceholderRowExec` (the one row of `SELECT 'x'`, or of an aggregate that
/// statistics answered) by the same row as an in-memory scan. A task that does not own such a
/// UNION branch gets it swapped for an empty memory scan, whose metrics no longer line up with
/// the stage's; Ballista 55 then rejects the task's status and the job never ends. A memory
/// scan is sliced as itself.
#[derive(Debug, Default)]
pub struct ConstantRowsInMemory;

impl PhysicalOptimizerRule for ConstantRowsInMemory {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.downcast_ref::<PlaceholderRowExec>().is_none() {
                return Ok(Transformed::no(node));
            }
            let schema = node.schema();
            // No parent reads these columns (they are a placeholder), but the row must fit the
            // declared schema, which can say "not null".
            let columns = schema
                .fields()
                .iter()
                .map(|f| match ScalarValue::new_default(f.data_type()) {
                    Ok(v) if !f.is_nullable() => v.to_array_of_size(1),
                    _ => Ok(new_null_array(f.data_type(), 1)),
                })
                .collect::<Result<Vec<_>>>()?;
            let one_row = RecordBatchOptions::new().with_row_count(Some(1));
            let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &one_row)?;
            let partitions = node.properties().output_partitioning().partition_count();
            let exec =
                MemorySourceConfig::try_new_exec(&vec![vec![batch]; partitions], schema, None)?;
            Ok(Transformed::yes(exec as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "constant_rows_in_memory"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn constant_rows_become_a_memory_scan_with_the_same_rows() {
        let ctx = SessionContext::new();
        let sql = "SELECT 'a' AS k, 1 AS n UNION ALL SELECT 'b', 2";
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let shown = |p: &Arc<dyn ExecutionPlan>| {
            datafusion::physical_plan::displayable(p.as_ref())
                .indent(false)
                .to_string()
        };
        assert!(
            shown(&plan).contains("PlaceholderRowExec"),
            "{}",
            shown(&plan)
        );
        let rewritten = ConstantRowsInMemory
            .optimize(plan.clone(), &ConfigOptions::default())
            .unwrap();
        assert!(
            !shown(&rewritten).contains("PlaceholderRowExec"),
            "{}",
            shown(&rewritten)
        );
        let print = |b: &[RecordBatch]| {
            arrow::util::pretty::pretty_format_batches(b)
                .unwrap()
                .to_string()
        };
        let before = collect(plan, ctx.task_ctx()).await.unwrap();
        let after = collect(rewritten, ctx.task_ctx()).await.unwrap();
        assert_eq!(print(&before), print(&after));
        assert_eq!(after.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    }

    #[test]
    fn the_scheduler_plans_with_the_static_planner_whatever_the_client_asks() {
        let asked = SessionConfig::new_with_ballista().with_ballista_adaptive_query_planner(true);
        let state = session(asked).unwrap();
        assert!(!state.config().ballista_adaptive_query_planner_enabled());
        assert!(state
            .physical_optimizers()
            .iter()
            .any(|r| r.name() == "constant_rows_in_memory"));
    }
}
