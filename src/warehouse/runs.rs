//! Run history: one row per finished job run in the warehouse table `_runs` (job, period,
//! status, times, rows, deliveries, error, detail), appended in its own commit, so that
//! backfills skip what succeeded and operators can list and inspect runs.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Serialize;

use super::{commit_properties, Warehouse, WarehouseError};

pub const TABLE: &str = "_runs";

/// How a run ended, stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Everything the job had to do was done: for a report, every recipient has it.
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    /// A stored status; anything else (a newer version's) is not a success.
    fn parse(s: &str) -> Status {
        if s == "succeeded" {
            Status::Succeeded
        } else {
            Status::Failed
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One finished run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub job: String,
    /// `extract` or `report`.
    pub kind: String,
    /// `YYYY-MM` for a report; empty for an extract.
    pub period: String,
    pub status: Status,
    /// UTC microseconds.
    pub started_at: i64,
    pub finished_at: i64,
    pub rows: i64,
    pub deliveries: i64,
    pub error: String,
    /// Steps, checks and the end of the log, as JSON text.
    pub detail: String,
}

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("job", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("period", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("started_at", ts.clone(), false),
        Field::new("finished_at", ts, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("deliveries", DataType::Int64, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
    ]))
}

/// Appends `r` to the run history.
pub async fn record(wh: &Warehouse, r: &RunRecord) -> Result<(), WarehouseError> {
    let data = |e: arrow::error::ArrowError| WarehouseError::Data {
        table: TABLE.into(),
        message: e.to_string(),
    };
    let ts = |v: i64| Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"));
    let text = |v: &str| Arc::new(StringArray::from(vec![v.to_string()]));
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            text(&r.run_id),
            text(&r.job),
            text(&r.kind),
            text(&r.period),
            text(r.status.as_str()),
            ts(r.started_at),
            ts(r.finished_at),
            Arc::new(Int64Array::from(vec![r.rows])),
            Arc::new(Int64Array::from(vec![r.deliveries])),
            text(&r.error),
            text(&r.detail),
        ],
    )
    .map_err(data)?;
    // Concurrent jobs append to the same table: delta-rs retries a conflicting append.
    let mut attempt = 0;
    loop {
        let table = wh.open(TABLE).await?;
        let res = table
            .write(vec![batch.clone()])
            .with_save_mode(deltalake::protocol::SaveMode::Append)
            .with_commit_properties(commit_properties(vec![], vec![]))
            .await;
        match res {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "retrying the run history commit");
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => {
                return Err(WarehouseError::Delta {
                    table: TABLE.into(),
                    source: Box::new(e),
                })
            }
        }
    }
}

/// Every recorded run, newest first.
pub async fn all(wh: &Warehouse) -> Result<Vec<RunRecord>, WarehouseError> {
    let Some(table) = wh.read(TABLE).await? else {
        return Ok(vec![]);
    };
    let ctx = datafusion::prelude::SessionContext::new();
    super::register(&ctx, &table, "runs").await?;
    let err = |e: datafusion::error::DataFusionError| WarehouseError::Data {
        table: TABLE.into(),
        message: e.to_string(),
    };
    let sql = "SELECT run_id, job, kind, period, status, started_at, finished_at, rows, deliveries, error, detail FROM runs ORDER BY started_at DESC, run_id";
    let df = parstat_plan::sql(&ctx, sql).await.map_err(err)?;
    let batches = parstat_plan::collect(df).await.map_err(err)?;
    let mut out = Vec::new();
    for b in &batches {
        let s = |i: usize| -> Vec<String> {
            let c = arrow::compute::cast(b.column(i), &DataType::Utf8).expect("text");
            let a = c.as_any().downcast_ref::<StringArray>().expect("utf8");
            (0..a.len()).map(|k| a.value(k).to_string()).collect()
        };
        let n = |i: usize| -> Vec<i64> {
            let c = arrow::compute::cast(b.column(i), &DataType::Int64).expect("int");
            let a = c.as_any().downcast_ref::<Int64Array>().expect("int64");
            (0..a.len()).map(|k| a.value(k)).collect()
        };
        let (run_id, job, kind, period, status) = (s(0), s(1), s(2), s(3), s(4));
        let (started, finished, rows, deliveries) = (n(5), n(6), n(7), n(8));
        let (error, detail) = (s(9), s(10));
        for k in 0..b.num_rows() {
            out.push(RunRecord {
                run_id: run_id[k].clone(),
                job: job[k].clone(),
                kind: kind[k].clone(),
                period: period[k].clone(),
                status: Status::parse(&status[k]),
                started_at: started[k],
                finished_at: finished[k],
                rows: rows[k],
                deliveries: deliveries[k],
                error: error[k].clone(),
                detail: detail[k].clone(),
            });
        }
    }
    Ok(out)
}
