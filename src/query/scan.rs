//! Reads a table of many small files on every core: a physical optimizer rule for the scans
//! DataFusion leaves on one.
//!
//! DataFusion spreads a scan over the session's partitions only when the table's statistics
//! promise more rows than one batch (8,192). The Delta log gives exact row counts, so a table
//! of few rows in many files, such as the investment events (about 5,000 rows in one file per
//! month since 2005), was read one file after another on one core, although opening a file,
//! not its rows, is most of such a scan's work: 250 files took about 75 ms.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// The rule: a Delta scan of at least as many files as the session has partitions, left in one
/// partition and with no order that a parent could rely on, is split over the partitions
/// (whatever the files' size) and its streams merged back into one, so that the plan above it
/// is unchanged.
#[derive(Debug, Default)]
pub struct ParallelFileScans;

/// The name delta-rs gives its scan node (the Parquet scan of the table's files is its child).
const DELTA_SCAN: &str = "DeltaScanExec";

impl PhysicalOptimizerRule for ParallelFileScans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partitions = config.execution.target_partitions;
        if partitions < 2 || !config.optimizer.repartition_file_scans {
            return Ok(plan);
        }
        // Any size of file may be split: what is spread here is the opening of files.
        let mut split = config.clone();
        split.optimizer.repartition_file_min_size = 0;
        plan.transform_down(|node| {
            // A scan with a limit is left alone: each partition would apply it, and the
            // optimizer may have removed the limit above a one-partition scan.
            let (files, limited) = files(&node);
            if node.name() != DELTA_SCAN
                || node.output_partitioning().partition_count() != 1
                || node.output_ordering().is_some()
                || node.fetch().is_some()
                || limited
                || files < partitions
            {
                return Ok(Transformed::no(node));
            }
            match node.repartitioned(partitions, &split)? {
                Some(spread) if spread.output_partitioning().partition_count() > 1 => {
                    let merged: Arc<dyn ExecutionPlan> =
                        Arc::new(CoalescePartitionsExec::new(spread));
                    Ok(Transformed::new(merged, true, TreeNodeRecursion::Jump))
                }
                _ => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "parallel_file_scans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The files a Delta scan's Parquet child reads, and whether a limit was pushed into it (no
/// files for any other shape).
fn files(scan: &Arc<dyn ExecutionPlan>) -> (usize, bool) {
    scan.children()
        .iter()
        .filter_map(|c| c.downcast_ref::<DataSourceExec>())
        .filter_map(|d| d.data_source().downcast_ref::<FileScanConfig>())
        .fold((0, false), |(n, limited), c| {
            (
                n + c.file_groups.iter().map(|g| g.len()).sum::<usize>(),
                limited || c.limit.is_some(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::{self, Warehouse, WriteMode};
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use deltalake::kernel::transaction::CommitProperties;

    fn session(rule: bool) -> SessionContext {
        let mut b = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features();
        if rule {
            b = b.with_physical_optimizer_rule(Arc::new(ParallelFileScans));
        }
        SessionContext::new_with_state(b.build())
    }

    /// The plan and the result of summing `n` over the table `t`.
    async fn sum(ctx: &SessionContext) -> (String, i64) {
        let df = ctx.sql("SELECT SUM(n) AS s FROM t").await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(true).to_string();
        let out = df.collect().await.unwrap();
        let s = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        (text, s)
    }

    #[tokio::test]
    async fn a_delta_scan_of_few_rows_in_many_files_is_read_on_every_partition() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path(), "warehouse").unwrap();
        // Six rows in six partitions: one file each, far fewer rows than a batch.
        let schema = Arc::new(Schema::new(vec![
            Field::new("month", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let months = [
            "2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06",
        ];
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(months.to_vec())),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6])),
            ],
        )
        .unwrap();
        let table = warehouse::write(
            wh.open("t").await.unwrap(),
            "t",
            rows,
            Some("month"),
            WriteMode::Append,
            CommitProperties::default(),
        )
        .await
        .unwrap();

        // DataFusion alone reads the six files one after another, in one partition.
        let plain = session(false);
        warehouse::register(&plain, &table, "t").await.unwrap();
        let (text, s) = sum(&plain).await;
        assert_eq!(s, 21);
        assert!(text.contains("file_groups={1 group"), "{text}");
        assert!(!text.contains("CoalescePartitionsExec"), "{text}");

        // With the rule: the files are split over both partitions, merged back above the
        // Delta scan, and the result is the same.
        let ctx = session(true);
        warehouse::register(&ctx, &table, "t").await.unwrap();
        let (text, s) = sum(&ctx).await;
        assert_eq!(s, 21);
        assert!(text.contains("file_groups={2 groups"), "{text}");
        let merged = text.find("CoalescePartitionsExec").expect(&text);
        assert!(merged < text.find(DELTA_SCAN).unwrap(), "{text}");

        // A limit pushed into the scan keeps it whole: split, each part would return it.
        for n in [1usize, 4] {
            let rows: usize = ctx
                .sql(&format!("SELECT n FROM t LIMIT {n}"))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum();
            assert_eq!(rows, n);
        }
    }
}
