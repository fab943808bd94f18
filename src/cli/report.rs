//! `parstat report <report> --period YYYY-MM [--preview DIR] [--resend]`: compute one report
//! for one period, publish and deliver it, or write its tables and email to DIR.

use std::path::{Path, PathBuf};

use super::{load_project, Failure};
use crate::config::diag::suggest;
use crate::jobs::report::{ReportError, ReportOptions};
use crate::query::{Period, QueryError};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The report (a file name in pipelines/ without .toml).
    pub report: String,
    /// The month, YYYY-MM, under the report's period rule.
    #[arg(long, value_name = "YYYY-MM")]
    pub period: String,
    /// Write each table as DIR/<table>.csv and DIR/<table>.parquet (and DIR/report.json);
    /// publish and send nothing.
    #[arg(long, value_name = "DIR")]
    pub preview: Option<PathBuf>,
    /// Send again to recipients who already received this report for this period.
    #[arg(long, conflicts_with = "preview")]
    pub resend: bool,
}

pub async fn run(project_dir: &Path, args: ReportArgs) -> Result<(), Failure> {
    let project = load_project(project_dir)?;
    let reports = project.report_names();
    let Some(pipeline) = project
        .pipeline(&args.report)
        .filter(|p| p.as_report().is_some())
    else {
        return Err(Failure::usage(anyhow::anyhow!(
            "`{}` is not a report: {}",
            args.report,
            suggest(&args.report, &reports)
        )));
    };
    let rule = pipeline.as_report().expect("filtered").period_rule;
    let period = Period::parse(&args.period, rule).map_err(Failure::usage)?;
    let opts = ReportOptions {
        preview: args.preview.as_deref(),
        send: true,
        resend: args.resend,
        guard: Default::default(),
    };
    let result = crate::jobs::report(&project, pipeline, period, &opts).await;
    let outcome = match result {
        Ok(o) => o,
        // A broken SQL file is the analyst's configuration; a failed check or an unreadable
        // warehouse is a failed job.
        Err(ReportError::Query(e @ QueryError::Sql { .. })) => return Err(Failure::usage(e)),
        Err(e) => return Err(Failure::failed(e)),
    };
    let c = &outcome.computed;
    println!(
        "{} {} ({}): {} checks passed; run {}",
        c.report,
        c.period.label(),
        c.period.covered_text(),
        c.checks.len(),
        outcome.run_id
    );
    for t in &c.tables {
        if t.is_empty() {
            println!("{}: no data for {}", t.name, c.period.month_text());
        } else {
            println!("{}: {} rows", t.name, t.rows());
        }
    }
    for f in &outcome.files {
        println!("{}", f.display());
    }
    for (t, v) in &outcome.published {
        println!("{}: version {v}", crate::query::published_name(t));
    }
    for d in &outcome.delivered {
        let what = match d.outcome {
            crate::deliver::ledger::Outcome::Sent => "sent",
            crate::deliver::ledger::Outcome::Failed => "FAILED",
            crate::deliver::ledger::Outcome::AlreadyDelivered => "already delivered",
            crate::deliver::ledger::Outcome::InProgress => "being sent by another run",
        };
        match &d.file {
            Some(f) => println!("{}: {what} {} {}", d.recipient, d.message_id, f.display()),
            None => println!("{}: {what} {}", d.recipient, d.message_id),
        }
    }
    Ok(())
}
