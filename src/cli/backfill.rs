//! `parstat backfill <job>... | --all --from YYYY-MM --to YYYY-MM [--jobs N] [--dry-run]
//! [--send]`: prints the plan (jobs × periods, what exists, what will run), then runs it with a
//! progress bar; sends nothing unless --send.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use super::{load_project, Failure};
use crate::config::diag::suggest;
use crate::config::Project;
use crate::jobs::backfill::{self, State, Task};

#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    /// Report jobs to backfill (file names in pipelines/ without .toml).
    pub jobs: Vec<String>,
    /// Every report job.
    #[arg(long, conflicts_with = "jobs")]
    pub all: bool,
    /// First period, YYYY-MM.
    #[arg(long, value_name = "YYYY-MM")]
    pub from: String,
    /// Last period, YYYY-MM.
    #[arg(long, value_name = "YYYY-MM")]
    pub to: String,
    /// At most N jobs at a time (each job's periods run in order).
    #[arg(long = "jobs", value_name = "N", default_value_t = 2)]
    pub parallel: usize,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Email each period's report (a backfill sends nothing by default).
    #[arg(long)]
    pub send: bool,
}

pub async fn run(project_dir: &Path, args: BackfillArgs) -> Result<(), Failure> {
    let project = load_project(project_dir)?;
    let tasks = plan(&project, &args.jobs, args.all, &args.from, &args.to).await?;
    let todo = tasks
        .iter()
        .filter(|t| !matches!(t.state, State::Done { .. }))
        .count();
    print_plan(&tasks, args.send);
    if args.dry_run || todo == 0 {
        return Ok(());
    }
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(todo as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed}]")
            .expect("valid template"),
    );
    let b = bar.clone();
    let on_done = Arc::new(move |t: &Task, ok: bool| {
        b.set_message(format!("{} {}", t.job, t.period.label()));
        b.inc(1);
        tracing::info!(job = %t.job, period = %t.period.label(), ok, "backfill step");
    });
    let outcome = backfill::run(&project, &tasks, args.parallel, args.send, on_done).await?;
    bar.finish_and_clear();
    println!(
        "backfill: {} succeeded, {} failed, {} already done",
        outcome.succeeded,
        outcome.failed.len(),
        outcome.skipped
    );
    for (job, period, e) in &outcome.failed {
        eprintln!("error: {job} {period}: {}", crate::error::report(e));
    }
    if !outcome.failed.is_empty() {
        return Err(Failure::failed(anyhow::anyhow!(
            "{} of {todo} periods failed; rerun the same command to retry only those",
            outcome.failed.len()
        )));
    }
    Ok(())
}

/// The plan for the named report jobs (or all) over the range.
pub async fn plan(
    project: &Project,
    names: &[String],
    all: bool,
    from: &str,
    to: &str,
) -> Result<Vec<Task>, Failure> {
    let reports = project.report_names();
    if !all && names.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "name the report jobs to backfill, or pass --all ({})",
            reports.join(", ")
        )));
    }
    let mut jobs = Vec::new();
    for p in &project.pipelines {
        if p.as_report().is_some() && (all || names.contains(&p.name)) {
            jobs.push(p);
        }
    }
    for n in names {
        if !reports.contains(&n.as_str()) {
            return Err(Failure::usage(anyhow::anyhow!(
                "`{n}` is not a report job: {}",
                suggest(n, &reports)
            )));
        }
    }
    backfill::plan(project, &jobs, from, to)
        .await
        .map_err(Failure::usage)
}

fn print_plan(tasks: &[Task], send: bool) {
    let todo = tasks
        .iter()
        .filter(|t| !matches!(t.state, State::Done { .. }))
        .count();
    println!(
        "plan: {} job-periods, {} to run, {} already done{}",
        tasks.len(),
        todo,
        tasks.len() - todo,
        if send {
            "; emails will be sent"
        } else {
            "; no email will be sent"
        }
    );
    for t in tasks {
        let what = match &t.state {
            State::Done { run_id } => format!("done (run {run_id})"),
            State::Failed { error, .. } => format!(
                "will rerun (failed: {})",
                error.lines().next().unwrap_or_default()
            ),
            State::Missing => "will run".to_string(),
        };
        println!("  {:<22} {}  {what}", t.job, t.period.label());
    }
}
