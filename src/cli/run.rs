//! `parstat run --period YYYY-MM | --due`: everything a period needs, in dependency order:
//! every extract (incremental, so a rerun reads only what changed), then each report job for
//! its period, skipping reports that already succeeded for it. Reports are emailed.

use std::path::Path;
use std::sync::Arc;

use super::{load_project, Failure};
use crate::jobs::backfill::{self, State, Task};
use crate::query::Period;

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct RunArgs {
    /// The period, YYYY-MM, of every report job.
    #[arg(long, value_name = "YYYY-MM")]
    pub period: Option<String>,
    /// Each report job's period due now (the previous or the current month, as its
    /// pipeline file says).
    #[arg(long)]
    pub due: bool,
}

pub async fn run(project_dir: &Path, args: RunArgs) -> Result<(), Failure> {
    let project = load_project(project_dir)?;
    super::extract::all(project_dir).await?;
    let now = crate::clock::now();
    let mut tasks: Vec<Task> = Vec::new();
    for p in project.pipelines.iter().filter(|p| p.as_report().is_some()) {
        let job = p.as_report().expect("filtered");
        let period = match &args.period {
            Some(s) => Period::parse(s, job.period_rule).map_err(Failure::usage)?,
            None => crate::jobs::due_period(&project, p, now).expect("a report"),
        };
        let planned = backfill::plan(&project, &[p], &period.label(), &period.label())
            .await
            .map_err(Failure::usage)?;
        tasks.extend(planned);
    }
    for t in &tasks {
        let what = match &t.state {
            State::Done { run_id } => format!("already done (run {run_id})"),
            _ => "runs".into(),
        };
        println!("{} {}: {what}", t.job, t.period.label());
    }
    let outcome = backfill::run(&project, &tasks, 2, true, Arc::new(|_: &Task, _| {})).await?;
    println!(
        "run: {} succeeded, {} failed, {} already done",
        outcome.succeeded,
        outcome.failed.len(),
        outcome.skipped
    );
    if let Some((job, period, e)) = outcome.failed.first() {
        return Err(Failure::failed(anyhow::anyhow!(
            "{job} {period}: {}",
            crate::error::report(e)
        )));
    }
    Ok(())
}
