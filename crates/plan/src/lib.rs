//! DataFusion's SQL planning and DataFrame entry points behind plain functions.
//!
//! rustc compiles an upstream async fn's body, and every generic function it reaches, in each
//! crate that awaits it. Awaited from parstat, DataFusion's SQL planner was compiled again at
//! parstat's opt-level 3, over a quarter of parstat's code. Behind these functions it is compiled
//! once, here, at the planning crates' opt-level (`Cargo.toml`); `#[inline(never)]` keeps rustc
//! from copying a wrapper, and with it the body, into its callers.

use std::future::Future;
use std::pin::Pin;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ParamValues;
use datafusion::dataframe::{DataFrame, DataFrameWriteOptions};
use datafusion::error::Result;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::CsvReadOptions;

/// A future whose body was compiled here.
pub type Planned<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// [`SessionContext::sql`].
#[inline(never)]
pub fn sql<'a>(ctx: &'a SessionContext, sql: &'a str) -> Planned<'a, DataFrame> {
    Box::pin(ctx.sql(sql))
}

/// [`SessionContext::sql_with_options`].
#[inline(never)]
pub fn sql_with_options<'a>(
    ctx: &'a SessionContext,
    sql: &'a str,
    options: SQLOptions,
) -> Planned<'a, DataFrame> {
    Box::pin(ctx.sql_with_options(sql, options))
}

/// The logical plan of `sql` in `ctx`'s current state, not run
/// ([`SessionState::create_logical_plan`](datafusion::execution::SessionState::create_logical_plan)).
#[inline(never)]
pub fn logical_plan<'a>(ctx: &'a SessionContext, sql: &'a str) -> Planned<'a, LogicalPlan> {
    Box::pin(async move { ctx.state().create_logical_plan(sql).await })
}

/// [`SessionContext::table`].
#[inline(never)]
pub fn table<'a>(ctx: &'a SessionContext, name: &'a str) -> Planned<'a, DataFrame> {
    Box::pin(ctx.table(name))
}

/// [`SessionContext::register_csv`].
#[inline(never)]
pub fn register_csv<'a>(
    ctx: &'a SessionContext,
    name: &'a str,
    path: &'a str,
    options: CsvReadOptions<'a>,
) -> Planned<'a, ()> {
    Box::pin(ctx.register_csv(name, path, options))
}

/// [`SessionContext::read_batches`], with one empty batch of `schema` when there are none:
/// DataFusion takes the columns from the first batch, so no batches would mean no columns.
#[inline(never)]
pub fn read_batches(
    ctx: &SessionContext,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<DataFrame> {
    if batches.is_empty() {
        ctx.read_batches([RecordBatch::new_empty(schema)])
    } else {
        ctx.read_batches(batches)
    }
}

/// [`DataFrame::collect`].
#[inline(never)]
pub fn collect(df: DataFrame) -> Planned<'static, Vec<RecordBatch>> {
    Box::pin(df.collect())
}

/// [`DataFrame::with_param_values`].
#[inline(never)]
pub fn with_param_values(df: DataFrame, params: ParamValues) -> Result<DataFrame> {
    df.with_param_values(params)
}

/// [`DataFrame::drop_columns`].
#[inline(never)]
pub fn drop_columns(df: DataFrame, columns: &[&str]) -> Result<DataFrame> {
    df.drop_columns(columns)
}

/// [`DataFrame::write_csv`].
#[inline(never)]
pub fn write_csv(
    df: DataFrame,
    path: &str,
    options: DataFrameWriteOptions,
) -> Planned<'_, Vec<RecordBatch>> {
    Box::pin(df.write_csv(path, options, None))
}

/// [`DataFrame::write_parquet`].
#[inline(never)]
pub fn write_parquet(
    df: DataFrame,
    path: &str,
    options: DataFrameWriteOptions,
) -> Planned<'_, Vec<RecordBatch>> {
    Box::pin(df.write_parquet(path, options, None))
}
