//! The one place that chains the stages into jobs: a report job runs query → checks →
//! publish → render → deliver (or preview files); a backfill runs report jobs over periods.
//! Extract jobs chain source → validate → warehouse in `extract`. Every finished run is
//! recorded in the run history.

pub mod backfill;
pub mod report;

use crate::config::pipeline::Pipeline;
use crate::deliver::ledger::Outcome;
use crate::query::Period;
use crate::warehouse::runs::RunRecord;

/// The run-history row of a report run, from its result.
pub fn report_record(
    pipeline: &Pipeline,
    period: Period,
    started: chrono::DateTime<chrono::Utc>,
    result: &Result<report::ReportOutcome, report::ReportError>,
) -> RunRecord {
    let finished = chrono::Utc::now();
    let (run_id, status, rows, deliveries, error, detail) = match result {
        Ok(o) => {
            let c = &o.computed;
            let detail = serde_json::json!({
                "covers": c.period.covered_text(),
                "tables": c.tables.iter().map(|t| serde_json::json!({"name": t.name, "rows": t.rows(), "sql_sha256": t.sql_sha256})).collect::<Vec<_>>(),
                "checks": c.checks.iter().map(|k| serde_json::json!({"name": k.name, "passed": k.passed})).collect::<Vec<_>>(),
                "published": o.published,
                "deliveries": o.delivered.iter().map(|d| serde_json::json!({"recipient": d.recipient, "outcome": d.outcome, "message_id": d.message_id})).collect::<Vec<_>>(),
            });
            (
                o.run_id.clone(),
                "succeeded",
                c.tables.iter().map(|t| t.rows() as i64).sum(),
                o.delivered
                    .iter()
                    .filter(|d| d.outcome == Outcome::Sent)
                    .count() as i64,
                String::new(),
                detail,
            )
        }
        Err(e) => (
            uuid::Uuid::now_v7().to_string(),
            "failed",
            0,
            0,
            format!("{e:#}"),
            serde_json::json!({ "error_chain": error_chain(e), "log_tail": crate::logtail::last(40) }),
        ),
    };
    RunRecord {
        run_id,
        job: pipeline.name.clone(),
        kind: "report".into(),
        period: period.label(),
        status: status.into(),
        started_at: started.timestamp_micros(),
        finished_at: finished.timestamp_micros(),
        rows,
        deliveries,
        error,
        detail: detail.to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

/// Appends the extract run to the run history; a failure to record is logged, not fatal.
pub async fn record_extract(
    project: &crate::config::Project,
    pipeline: &str,
    started: chrono::DateTime<chrono::Utc>,
    result: &Result<crate::extract::Summary, crate::extract::ExtractError>,
) {
    use crate::warehouse::runs::{self, RunRecord};
    let (run_id, status, rows, error, detail) = match result {
        Ok(s) => (
            s.run_id.clone(),
            "succeeded",
            s.rows_written as i64,
            String::new(),
            serde_json::to_string(s).unwrap_or_default(),
        ),
        Err(e) => (
            uuid::Uuid::now_v7().to_string(),
            "failed",
            0,
            e.to_string(),
            String::from("{}"),
        ),
    };
    let r = RunRecord {
        run_id,
        job: pipeline.to_string(),
        kind: "extract".into(),
        period: String::new(),
        status: status.into(),
        started_at: started.timestamp_micros(),
        finished_at: chrono::Utc::now().timestamp_micros(),
        rows,
        deliveries: 0,
        error,
        detail,
    };
    let recorded =
        match crate::warehouse::Warehouse::new(&project.root, &project.settings.warehouse_url) {
            Ok(wh) => runs::record(&wh, &r).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
    if let Err(e) = recorded {
        tracing::error!(pipeline, error = %e, "could not record the run");
    }
}
