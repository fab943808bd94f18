//! The query stage: a report's SQL files run by DataFusion over the warehouse for one period,
//! with the period parameters bound as typed values, each previous-period value joined in,
//! and the publish checks run before anything leaves this stage.
//!
//! - `session.rs`: the DataFusion session over the warehouse (or tables held in memory) and
//!   the seeds;
//! - `sql.rs`: what SQL may do, running it with the parameters bound, plain result types;
//! - `compute.rs`: a report's SQL files for one period, in dependency waves;
//! - `compare.rs`: the previous period's values joined in as `<measure>_prev`;
//! - `checks.rs`: the publish checks;
//! - `period.rs`, `plan.rs`, `scan.rs`, `udf.rs`: periods, planning without running, the scan
//!   rule, parstat's SQL functions.

mod checks;
mod compare;
mod compute;
pub mod period;
pub mod plan;
pub mod scan;
mod session;
mod sql;
pub mod udf;

use std::path::PathBuf;

use crate::warehouse::WarehouseError;

pub use checks::CheckOutcome;
pub use compute::{compute, compute_with, params, Computed, ResultTable};
pub use period::Period;
pub use session::{
    seed_files, seed_schema, session, session_with, InputTable, Inputs, MemoryTables,
};
pub(crate) use sql::first_line;
pub use sql::{named_tables, plan_query, read_only, run_sql, sample, MAX_CHAIN};

pub use crate::warehouse::published::published_name;

/// What a SQL error came from: DataFusion's error for a query, Arrow's for a result that does
/// not cast to plain types, or parstat's own message (a compare key that is not a column).
pub type SqlCause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A SQL file, seed, check or table that DataFusion (or parstat) refused. The text ends
    /// with the cause's, as it always did (`crate::error::report` does not repeat it).
    #[error("{file}: error: {source}")]
    Sql {
        file: String,
        #[source]
        source: SqlCause,
    },
    /// A query that planned but that the cluster could not finish (an executor lost, the
    /// scheduler gone), or a cluster that does not answer: not the SQL's fault; a rerun may
    /// succeed.
    #[error("{file}: the cluster failed: {source}")]
    Cluster {
        file: String,
        #[source]
        source: SqlCause,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("{}", checks::checks_failed_text(report, period, failed))]
    ChecksFailed {
        report: String,
        period: String,
        failed: Vec<CheckOutcome>,
    },
}

impl QueryError {
    /// A SQL error of `file` (a SQL file, a seed, a check, a table), caused by `source`.
    pub(crate) fn sql(file: impl Into<String>, source: impl Into<SqlCause>) -> QueryError {
        QueryError::Sql {
            file: file.into(),
            source: source.into(),
        }
    }

    /// An error of running `file`'s planned query in `ctx`: the cluster's when it ran there.
    #[cfg(feature = "cluster")]
    pub(crate) fn ran(
        ctx: &datafusion::prelude::SessionContext,
        file: impl Into<String>,
        source: impl Into<SqlCause>,
    ) -> QueryError {
        if session::cluster_timeout(ctx).is_some() {
            QueryError::Cluster {
                file: file.into(),
                source: source.into(),
            }
        } else {
            QueryError::sql(file, source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError;
    use std::error::Error as _;

    #[tokio::test]
    async fn a_sql_error_keeps_datafusions_error_as_its_source() {
        let ctx = datafusion::prelude::SessionContext::new();
        let e = run_sql(&ctx, "sql/x.sql", "SELECT nope FROM nowhere", &[])
            .await
            .expect_err("an unknown table");
        let source = e.source().expect("a source");
        let df = source
            .downcast_ref::<DataFusionError>()
            .expect("the DataFusion error");
        // The text is unchanged: the file, then DataFusion's whole message.
        assert_eq!(e.to_string(), format!("sql/x.sql: error: {df}"));
        assert!(e.to_string().contains("nowhere"), "{e}");
    }

    #[test]
    fn a_message_of_parstats_own_reads_as_before() {
        let e = QueryError::sql("x.sql (previous period)", "compare key `k` is not a column");
        assert_eq!(
            e.to_string(),
            "x.sql (previous period): error: compare key `k` is not a column"
        );
    }
}
