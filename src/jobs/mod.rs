//! The one place that runs jobs: an extract, or a report for a period (query → checks →
//! publish → render → deliver, or a preview), each recorded in the run history with a typed
//! status; which period a report is due for; and what a scheduled fire does (skip what is
//! done, extract what is stale, then report). `cli`, `serve` and `demo` build requests here
//! and print the outcomes.

pub mod backfill;
pub mod fresh;
pub mod report;

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::config::pipeline::{JobKind, PeriodChoice, Pipeline};
use crate::config::Project;
use crate::deliver::ledger::Outcome;
use crate::extract::{self, ExtractError, ExtractOptions, Summary};
use crate::query::Period;
use crate::warehouse::lease::Guard;
use crate::warehouse::runs::{self, RunRecord, Status};
use crate::warehouse::{Warehouse, WarehouseError};
use report::{ReportError, ReportOptions, ReportOutcome};

/// Runs one extract pipeline and records the run.
pub async fn extract(
    project: &Project,
    pipeline: &Pipeline,
    opts: &ExtractOptions,
) -> Result<Summary, ExtractError> {
    let started = crate::clock::now();
    let result = extract::run(project, pipeline, opts).await;
    record(project, extract_record(&pipeline.name, started, &result)).await;
    result
}

/// Runs one report for one period and records the run (a preview is not a run).
pub async fn report(
    project: &Project,
    pipeline: &Pipeline,
    period: Period,
    opts: &ReportOptions<'_>,
) -> Result<ReportOutcome, ReportError> {
    let started = crate::clock::now();
    let result = report::run(project, pipeline, period, opts).await;
    if opts.preview.is_none() {
        record(project, report_record(pipeline, period, started, &result)).await;
    }
    result
}

/// The period a report job is due for when its schedule fires at `at`: the month containing
/// `at` or the one before, as its pipeline file says. None for an extract.
pub fn due_period(project: &Project, pipeline: &Pipeline, at: DateTime<Utc>) -> Option<Period> {
    let job = pipeline.as_report()?;
    let current = Period::containing(at, project.settings.timezone, job.period_rule);
    Some(match job.period {
        PeriodChoice::PreviousMonth => current.previous(),
        PeriodChoice::CurrentMonth => current,
    })
}

/// Whether the history holds a succeeded run of `job` for `period`.
pub fn succeeded<'a>(
    history: &'a [RunRecord],
    job: &str,
    period: &Period,
) -> Option<&'a RunRecord> {
    let label = period.label();
    history
        .iter()
        .find(|r| r.job == job && r.period == label && r.status == Status::Succeeded)
}

/// What a scheduled fire did.
#[derive(Debug)]
pub enum Fired {
    Extracted(Summary),
    /// The report ran (after the extracts it needed, if any were stale).
    Reported {
        period: Period,
        extracted: Vec<String>,
        outcome: Box<ReportOutcome>,
    },
    /// The period had already succeeded: nothing to do.
    AlreadyDone {
        period: Period,
        run_id: String,
    },
}

/// Why a scheduled job failed: carries the job and period, formatted once where it is shown.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{job}: {source}")]
    Extract {
        job: String,
        #[source]
        source: ExtractError,
    },
    #[error("{job} {period}: {source}")]
    Report {
        job: String,
        period: String,
        #[source]
        source: ReportError,
    },
    /// A needed dataset is still stale after its extract was run for it.
    #[error("{job} {period}: data not fresh: {}", fresh::describe(.stale))]
    Stale {
        job: String,
        period: String,
        stale: Vec<fresh::Stale>,
    },
    #[error("{job}: reading the run history: {source}")]
    History {
        job: String,
        #[source]
        source: WarehouseError,
    },
}

impl JobError {
    /// Whether the job stopped because the daemon's lease went to another scheduler.
    pub fn lease_lost(&self) -> bool {
        use crate::deliver::DeliverError;
        use crate::warehouse::lease::GuardError::Lost;
        matches!(
            self,
            JobError::Extract {
                source: ExtractError::Guard(Lost(_)),
                ..
            } | JobError::Report {
                source: ReportError::Guard(Lost(_))
                    | ReportError::Deliver(DeliverError::Guard(Lost(_))),
                ..
            }
        )
    }
}

/// One scheduled fire of `pipeline` at `at`, under the daemon's lease: an extract runs; a
/// report skips a period that already succeeded, runs the extract of every needed dataset
/// that is stale (rather than wait for that extract's own schedule, which may be days away),
/// and runs only if they are all fresh then.
pub async fn scheduled(
    project: &Project,
    pipeline: &Pipeline,
    at: DateTime<Utc>,
    guard: &Guard,
) -> Result<Fired, JobError> {
    let opts = ExtractOptions {
        guard: guard.clone(),
        ..Default::default()
    };
    let job = match &pipeline.job {
        JobKind::Extract(_) => {
            return extract(project, pipeline, &opts)
                .await
                .map(Fired::Extracted)
                .map_err(|source| JobError::Extract {
                    job: pipeline.name.clone(),
                    source,
                })
        }
        JobKind::Report(job) => job,
    };
    let period = due_period(project, pipeline, at).expect("a report");
    let history = history(project)
        .await
        .map_err(|source| history_error(pipeline, source))?;
    if let Some(r) = succeeded(&history, &pipeline.name, &period) {
        return Ok(Fired::AlreadyDone {
            period,
            run_id: r.run_id.clone(),
        });
    }
    let extracted = freshen(project, pipeline, &job.needs, period, &history, &opts).await?;
    let opts = ReportOptions {
        preview: None,
        send: true,
        resend: false,
        guard: guard.clone(),
    };
    report(project, pipeline, period, &opts)
        .await
        .map(|outcome| Fired::Reported {
            period,
            extracted,
            outcome: Box::new(outcome),
        })
        .map_err(|source| JobError::Report {
            job: pipeline.name.clone(),
            period: period.label(),
            source,
        })
}

/// A failure to read the run history, for the job that needed it.
fn history_error(pipeline: &Pipeline, source: WarehouseError) -> JobError {
    JobError::History {
        job: pipeline.name.clone(),
        source,
    }
}

/// Runs the extract of each dataset in `needs` that is stale for `period`, then looks
/// again: the extracts that ran, or `Stale` (recorded as the report's failure for
/// `period`) when some are still stale.
async fn freshen(
    project: &Project,
    pipeline: &Pipeline,
    needs: &[String],
    period: Period,
    history: &[RunRecord],
    opts: &ExtractOptions,
) -> Result<Vec<String>, JobError> {
    let now = crate::clock::now();
    let stale = fresh::stale(project, history, needs, period, now);
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    let (extracted, mut failed) = extract_stale(project, pipeline, &stale, opts).await;
    let history = self::history(project)
        .await
        .map_err(|source| history_error(pipeline, source))?;
    let now = crate::clock::now();
    let still: Vec<fresh::Stale> = fresh::stale(project, &history, needs, period, now)
        .into_iter()
        .map(|mut s| {
            s.extract_error = failed.remove(&s.dataset);
            s
        })
        .collect();
    if still.is_empty() {
        return Ok(extracted);
    }
    let e = JobError::Stale {
        job: pipeline.name.clone(),
        period: period.label(),
        stale: still,
    };
    // The history shows the report failed for this period, and why.
    let detail = serde_json::json!({ "not_run": "needed data not fresh", "extracted": extracted });
    record(
        project,
        failed_report_record(pipeline, period, now, &e, detail),
    )
    .await;
    Err(e)
}

/// Runs the producer of each stale dataset: the extracts that succeeded, and why each
/// other one failed, by dataset.
async fn extract_stale(
    project: &Project,
    pipeline: &Pipeline,
    stale: &[fresh::Stale],
    opts: &ExtractOptions,
) -> (Vec<String>, HashMap<String, String>) {
    let mut extracted = Vec::new();
    let mut failed = HashMap::new();
    for s in stale {
        let Some(producer) = project.pipeline(&s.producer) else {
            continue;
        };
        tracing::info!(report = %pipeline.name, dataset = %s.dataset, "needed data is stale; extracting it now");
        match extract(project, producer, opts).await {
            Ok(_) => extracted.push(producer.name.clone()),
            Err(e) => {
                failed.insert(s.dataset.clone(), crate::error::report(&e));
            }
        }
    }
    (extracted, failed)
}

/// Every recorded run, newest first.
pub async fn history(project: &Project) -> Result<Vec<RunRecord>, WarehouseError> {
    let wh = Warehouse::new(&project.root, &project.settings.warehouse_url)?;
    runs::all(&wh).await
}

/// Appends a run to the history; a failure to record is logged, not fatal (the job's own
/// outcome is what the caller reports).
async fn record(project: &Project, r: RunRecord) {
    let recorded = match Warehouse::new(&project.root, &project.settings.warehouse_url) {
        Ok(wh) => runs::record(&wh, &r).await,
        Err(e) => Err(e),
    };
    if let Err(e) = recorded {
        tracing::error!(job = %r.job, period = %r.period, error = %e, "could not record the run");
    }
}

/// The run-history row of a report run, from its result.
fn report_record(
    pipeline: &Pipeline,
    period: Period,
    started: DateTime<Utc>,
    result: &Result<ReportOutcome, ReportError>,
) -> RunRecord {
    let o = match result {
        Ok(o) => o,
        Err(e) => {
            let detail = serde_json::json!({ "error_chain": crate::error::causes(e), "log_tail": crate::logtail::last(40) });
            return failed_report_record(pipeline, period, started, e, detail);
        }
    };
    let c = &o.computed;
    let detail = serde_json::json!({
        "covers": c.period.covered_text(),
        "tables": c.tables.iter().map(|t| serde_json::json!({"name": t.name, "rows": t.rows(), "sql_sha256": t.sql_sha256})).collect::<Vec<_>>(),
        "checks": c.checks.iter().map(|k| serde_json::json!({"name": k.name, "passed": k.passed})).collect::<Vec<_>>(),
        "published": o.published,
        "deliveries": o.delivered.iter().map(|d| serde_json::json!({"recipient": d.recipient, "outcome": d.outcome, "message_id": d.message_id})).collect::<Vec<_>>(),
    });
    RunRecord {
        run_id: o.run_id.clone(),
        job: pipeline.name.clone(),
        kind: "report".into(),
        period: period.label(),
        status: Status::Succeeded,
        started_at: started.timestamp_micros(),
        finished_at: crate::clock::now().timestamp_micros(),
        rows: c.tables.iter().map(|t| t.rows() as i64).sum(),
        deliveries: o
            .delivered
            .iter()
            .filter(|d| d.outcome == Outcome::Sent)
            .count() as i64,
        error: String::new(),
        detail: detail.to_string(),
    }
}

/// The run-history row of a report run for `period` that failed with `e`.
fn failed_report_record(
    pipeline: &Pipeline,
    period: Period,
    started: DateTime<Utc>,
    e: &(dyn std::error::Error + 'static),
    detail: serde_json::Value,
) -> RunRecord {
    RunRecord {
        run_id: uuid::Uuid::now_v7().to_string(),
        job: pipeline.name.clone(),
        kind: "report".into(),
        period: period.label(),
        status: Status::Failed,
        started_at: started.timestamp_micros(),
        finished_at: crate::clock::now().timestamp_micros(),
        rows: 0,
        deliveries: 0,
        error: crate::error::report(e),
        detail: detail.to_string(),
    }
}

/// The run-history row of an extract run, from its result.
fn extract_record(
    pipeline: &str,
    started: DateTime<Utc>,
    result: &Result<Summary, ExtractError>,
) -> RunRecord {
    let (run_id, status, rows, error, detail) = match result {
        Ok(s) => (
            s.run_id.clone(),
            Status::Succeeded,
            s.rows_written as i64,
            String::new(),
            serde_json::to_string(s).unwrap_or_default(),
        ),
        Err(e) => (
            uuid::Uuid::now_v7().to_string(),
            Status::Failed,
            0,
            crate::error::report(e),
            String::from("{}"),
        ),
    };
    RunRecord {
        run_id,
        job: pipeline.to_string(),
        kind: "extract".into(),
        period: String::new(),
        status,
        started_at: started.timestamp_micros(),
        finished_at: crate::clock::now().timestamp_micros(),
        rows,
        deliveries: 0,
        error,
        detail,
    }
}
