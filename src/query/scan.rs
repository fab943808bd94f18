//! Reads a table of many small files on every core and in full batches: a physical optimizer
//! rule for the Delta scans DataFusion leaves on one core and in file-sized batches.
//!
//! DataFusion spreads a scan over the session's partitions only when the table's statistics
//! promise more rows than one batch (8,192). The Delta log gives exact row counts, so a table
//! of few rows in many files, such as the investment events (about 5,000 rows in one file per
//! month since 2005), was read one file after another on one core, although opening a file,
//! not its rows, is most of such a scan's work.
//!
//! Such a scan also yields one batch per file, about 20 rows each, and the operators above it
//! pay per batch: a grouped `last_value` walks all its groups at every batch. The scan's
//! batches are gathered into full ones before anything reads them, by a round-robin
//! repartition (which gathers its outputs, as DataFusion's own operators do since the
//! batch-gathering operator was deprecated).

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};
use deltalake::delta_datafusion::DeltaScanExec;

/// The rule, for each Delta scan:
/// - of at least as many files as the session has partitions, left in one partition and with
///   no order that a parent could rely on: its files are split over the partitions (whatever
///   their size) and its streams merged back into one, so that the plan above it is unchanged;
/// - of files holding fewer rows on average than half a batch: its batches are gathered into
///   batches of the session's batch size (in the merge, or in each partition).
#[derive(Debug, Default)]
pub struct ParallelFileScans;

impl PhysicalOptimizerRule for ParallelFileScans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partitions = config.execution.target_partitions;
        let batch: usize = config.execution.batch_size.into();
        // Any size of file may be split: what is spread here is the opening of files.
        let mut split = config.clone();
        split.optimizer.repartition_file_min_size = 0;
        plan.transform_up(|node| {
            // delta-rs's scan node; the Parquet scan of the table's files is its child.
            if node.downcast_ref::<DeltaScanExec>().is_none() {
                return Ok(Transformed::no(node));
            }
            let read = files(&node);
            let mut out = Arc::clone(&node);
            // A scan with a limit is not split: each partition would apply it, and the
            // optimizer may have removed the limit above a one-partition scan.
            let mut merge = false;
            if partitions >= 2
                && config.optimizer.repartition_file_scans
                && node.output_partitioning().partition_count() == 1
                && node.output_ordering().is_none()
                && node.fetch().is_none()
                && !read.limited
                && read.count >= partitions
            {
                if let Some(spread) = node.repartitioned(partitions, &split)? {
                    if spread.output_partitioning().partition_count() > 1 {
                        out = spread;
                        merge = true;
                    }
                }
            }
            let small = read.count > 1 && read.rows.is_some_and(|r| r / read.count < batch / 2);
            out = match (merge, small) {
                (true, false) => Arc::new(CoalescePartitionsExec::new(out)),
                // A repartition gathers the batches it passes on (unordered, as these are).
                (true, true) => gather(out, 1)?,
                (false, true) => {
                    let n = out.output_partitioning().partition_count();
                    gather(out, n)?
                }
                (false, false) => out,
            };
            Ok(if merge || small {
                Transformed::yes(out)
            } else {
                Transformed::no(node)
            })
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

/// `input`'s batches, round-robin into `partitions` outputs, gathered into full batches.
fn gather(input: Arc<dyn ExecutionPlan>, partitions: usize) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(Arc::new(RepartitionExec::try_new(
        input,
        Partitioning::RoundRobinBatch(partitions),
    )?))
}

/// What a Delta scan's Parquet child reads: its files, whether a limit was pushed into it,
/// and the files' rows when the log counts them all (no files for any other shape).
struct Files {
    count: usize,
    limited: bool,
    rows: Option<usize>,
}

fn files(scan: &Arc<dyn ExecutionPlan>) -> Files {
    let mut out = Files {
        count: 0,
        limited: false,
        rows: Some(0),
    };
    for c in scan
        .children()
        .iter()
        .filter_map(|c| c.downcast_ref::<DataSourceExec>())
        .filter_map(|d| d.data_source().downcast_ref::<FileScanConfig>())
    {
        out.limited |= c.limit.is_some();
        for f in c.file_groups.iter().flat_map(|g| g.iter()) {
            out.count += 1;
            let n = f
                .statistics
                .as_ref()
                .and_then(|s| s.num_rows.get_value().copied());
            out.rows = out.rows.zip(n).map(|(a, b)| a + b);
        }
    }
    out
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

    fn session(rule: bool, batch_size: usize) -> SessionContext {
        let mut b = SessionStateBuilder::new()
            .with_config(
                SessionConfig::new()
                    .with_target_partitions(2)
                    .with_batch_size(batch_size),
            )
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

    /// How many batches the partitions of `SELECT n FROM t` yield below their merge (a merge
    /// may gather batches of its own, as they happen to arrive).
    async fn batches(ctx: &SessionContext) -> usize {
        let plan = ctx
            .sql("SELECT n FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let merge =
            |p: &Arc<dyn ExecutionPlan>| p.downcast_ref::<CoalescePartitionsExec>().is_some();
        let mut below = Arc::clone(&plan);
        while !merge(&below) && below.children().len() == 1 {
            below = Arc::clone(below.children()[0]);
        }
        if merge(&below) {
            below = Arc::clone(below.children()[0]);
        } else {
            below = plan;
        }
        let (mut batches, mut rows) = (0, 0);
        for p in 0..below.output_partitioning().partition_count() {
            let out = datafusion::physical_plan::common::collect(
                below.execute(p, ctx.task_ctx()).unwrap(),
            )
            .await
            .unwrap();
            batches += out.len();
            rows += out.iter().map(|b| b.num_rows()).sum::<usize>();
        }
        assert_eq!(rows, 6);
        batches
    }

    // Long: the table of many small files, the plan and the batches are one story.
    #[tokio::test]
    async fn a_delta_scan_of_few_rows_in_many_files_is_read_on_every_partition_in_full_batches() {
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

        // DataFusion alone reads the six files one after another, in one partition, and
        // yields a batch per file.
        let plain = session(false, 8192);
        warehouse::register(&plain, &table, "t").await.unwrap();
        let (text, s) = sum(&plain).await;
        assert_eq!(s, 21);
        assert!(text.contains("file_groups={1 group"), "{text}");
        assert!(!text.contains("CoalescePartitionsExec"), "{text}");
        assert_eq!(batches(&plain).await, 6);

        // With the rule: the files are split over both partitions and merged back above
        // the Delta scan, and the result is the same. One row per file is under half a batch,
        // so the merge is a repartition into one partition, which gathers the six rows into
        // one batch.
        let ctx = session(true, 8192);
        warehouse::register(&ctx, &table, "t").await.unwrap();
        let (text, s) = sum(&ctx).await;
        assert_eq!(s, 21);
        assert!(text.contains("file_groups={2 groups"), "{text}");
        let merged = text
            .find("RepartitionExec: partitioning=RoundRobinBatch(1), input_partitions=2")
            .expect(&text);
        assert!(merged < text.find("DeltaScanExec").unwrap(), "{text}");
        assert!(!text.contains("CoalescePartitionsExec"), "{text}");
        assert_eq!(batches(&ctx).await, 1);

        // Files of half a batch (one row, batches of 2) hold as many rows as a table that
        // DataFusion spreads itself: the rule leaves that plan as it is.
        let whole = session(true, 2);
        warehouse::register(&whole, &table, "t").await.unwrap();
        let (text, s) = sum(&whole).await;
        assert_eq!(s, 21);
        let plain = session(false, 2);
        warehouse::register(&plain, &table, "t").await.unwrap();
        assert_eq!(text, sum(&plain).await.0);
        assert!(!text.contains("RoundRobinBatch(1)"), "{text}");

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
