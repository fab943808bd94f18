//! `parstat runs [list | show RUN_ID]`: the run history kept in the warehouse.

use std::path::Path;

use super::{load_project, Failure};

#[derive(clap::Args, Debug)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub what: Option<RunsCommand>,
}

#[derive(clap::Subcommand, Debug)]
pub enum RunsCommand {
    /// Job, period, status, start, duration, rows and deliveries of each run, newest first.
    List {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One run in full: steps, checks, deliveries, errors.
    Show { run_id: String },
}

pub async fn run(project_dir: &Path, args: RunsArgs) -> Result<(), Failure> {
    let project = load_project(project_dir)?;
    let all = crate::jobs::history(&project).await?;
    let tz = project.settings.timezone;
    let local = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap_or_default()
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    match args.what.unwrap_or(RunsCommand::List {
        job: None,
        limit: 50,
    }) {
        RunsCommand::List { job, limit } => {
            println!(
                "{:<36}  {:<20} {:<8} {:<10} {:<19} {:>8} {:>9} {:>5}",
                "run", "job", "period", "status", "started", "seconds", "rows", "sent"
            );
            for r in all
                .iter()
                .filter(|r| job.as_ref().is_none_or(|j| &r.job == j))
                .take(limit)
            {
                println!(
                    "{:<36}  {:<20} {:<8} {:<10} {:<19} {:>8.1} {:>9} {:>5}",
                    r.run_id,
                    r.job,
                    r.period,
                    r.status,
                    local(r.started_at),
                    (r.finished_at - r.started_at) as f64 / 1e6,
                    r.rows,
                    r.deliveries
                );
            }
            Ok(())
        }
        RunsCommand::Show { run_id } => {
            let Some(r) = all.iter().find(|r| r.run_id == run_id) else {
                return Err(Failure::usage(anyhow::anyhow!(
                    "no run `{run_id}`; `parstat runs list` shows them"
                )));
            };
            println!("run:      {}", r.run_id);
            println!("job:      {} ({})", r.job, r.kind);
            println!("period:   {}", r.period);
            println!("status:   {}", r.status);
            println!("started:  {}", local(r.started_at));
            println!("finished: {}", local(r.finished_at));
            println!("rows:     {}", r.rows);
            println!("sent:     {}", r.deliveries);
            if !r.error.is_empty() {
                println!("error:    {}", r.error);
            }
            let detail: serde_json::Value =
                serde_json::from_str(&r.detail).unwrap_or(serde_json::Value::Null);
            println!(
                "{}",
                serde_json::to_string_pretty(&detail).unwrap_or_default()
            );
            Ok(())
        }
    }
}
