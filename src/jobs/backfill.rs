//! Backfills: report jobs over a range of periods, planned first (what exists, what will
//! run), then run with at most N at a time, each report's periods in order, skipping what
//! already succeeded, so a rerun after a failure or a kill does only the rest. Nothing is
//! emailed unless asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::report::{self, ReportOptions};
use crate::config::pipeline::Pipeline;
use crate::config::Project;
use crate::query::Period;
use crate::warehouse::runs::{self, RunRecord, Status};
use crate::warehouse::WarehouseError;

/// What the history says of one job and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Succeeded in this run: skipped.
    Done { run_id: String },
    /// The last attempt failed: runs again.
    Failed { run_id: String, error: String },
    /// Never ran (or was killed before it finished): runs.
    Missing,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub job: String,
    pub period: Period,
    pub state: State,
}

/// Every (report job, period) from `from` to `to`, with its state.
pub async fn plan(
    project: &Project,
    jobs: &[&Pipeline],
    from: &str,
    to: &str,
) -> Result<Vec<Task>, anyhow::Error> {
    let history = super::history(project).await?;
    // The latest finished run of each (job, period) decides; history is newest first.
    let mut latest: BTreeMap<(String, String), &RunRecord> = BTreeMap::new();
    for r in &history {
        latest.entry((r.job.clone(), r.period.clone())).or_insert(r);
    }
    let mut out = Vec::new();
    for p in jobs {
        let Some(job) = p.as_report() else { continue };
        let first = Period::parse(from, job.period_rule)?;
        let last = Period::parse(to, job.period_rule)?;
        if last < first {
            anyhow::bail!("--to {to} is before --from {from}");
        }
        let mut period = first;
        while period <= last {
            let state = match latest.get(&(p.name.clone(), period.label())) {
                Some(r) if r.status == Status::Succeeded => State::Done {
                    run_id: r.run_id.clone(),
                },
                Some(r) => State::Failed {
                    run_id: r.run_id.clone(),
                    error: r.error.clone(),
                },
                None => State::Missing,
            };
            out.push(Task {
                job: p.name.clone(),
                period,
                state,
            });
            period = period.next();
        }
    }
    Ok(out)
}

/// Called after each task with whether it succeeded (a progress bar, a log line).
pub type OnDone = Arc<dyn Fn(&Task, bool) + Send + Sync>;

/// The outcome of a backfill.
#[derive(Debug, Default)]
pub struct Outcome {
    pub skipped: usize,
    pub succeeded: usize,
    /// (job, period, why) of each period that failed.
    pub failed: Vec<(String, String, report::ReportError)>,
}

/// Runs the tasks that are not done: each job's periods in order, at most `parallel` jobs at
/// a time. `on_done` is called after each task (for a progress bar).
pub async fn run(
    project: &Project,
    tasks: &[Task],
    parallel: usize,
    send: bool,
    on_done: OnDone,
) -> Result<Outcome, WarehouseError> {
    let mut outcome = Outcome {
        skipped: tasks
            .iter()
            .filter(|t| matches!(t.state, State::Done { .. }))
            .count(),
        ..Default::default()
    };
    let mut by_job: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for t in tasks
        .iter()
        .filter(|t| !matches!(t.state, State::Done { .. }))
    {
        by_job.entry(t.job.clone()).or_default().push(t.clone());
    }
    let limit = Arc::new(Semaphore::new(parallel.max(1)));
    let project = Arc::new(project.clone());
    let mut set = tokio::task::JoinSet::new();
    for (job, periods) in by_job {
        let (limit, project, on_done) = (limit.clone(), project.clone(), on_done.clone());
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            let pipeline = project
                .pipeline(&job)
                .expect("planned from the project")
                .clone();
            let mut results = Vec::new();
            for t in periods {
                let r = run_one(&project, &pipeline, t.period, send).await;
                on_done(&t, r.is_ok());
                results.push((t, r));
            }
            results
        });
    }
    while let Some(done) = set.join_next().await {
        let results = done.map_err(|e| WarehouseError::Data {
            table: runs::TABLE.into(),
            message: format!("a backfill task stopped: {e}"),
        })?;
        for (t, r) in results {
            match r {
                Ok(_) => outcome.succeeded += 1,
                Err(e) => outcome.failed.push((t.job.clone(), t.period.label(), e)),
            }
        }
    }
    Ok(outcome)
}

/// One report for one period, recorded in the run history either way.
pub async fn run_one(
    project: &Project,
    pipeline: &Pipeline,
    period: Period,
    send: bool,
) -> Result<report::ReportOutcome, report::ReportError> {
    let opts = ReportOptions {
        preview: None,
        send,
        resend: false,
        guard: Default::default(),
    };
    super::report(project, pipeline, period, &opts).await
}
