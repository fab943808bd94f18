//! `parstat test [--data] [--unit] [--period YYYY-MM] [FILTER...]`: data tests over the
//! warehouse and report unit tests in memory; exit 1 when any test of severity `error` fails.

use std::path::Path;

use super::{load_project, Failure, EXIT_USAGE};
use crate::config::pipeline::PeriodRule;
use crate::query::Period;
use crate::testing::{self, Outcome, Selection, Status};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Only the data tests of schemas/ (over the warehouse).
    #[arg(long)]
    pub data: bool,
    /// Only the report unit tests of sql/**/tests/ (no warehouse needed).
    #[arg(long)]
    pub unit: bool,
    /// The month bound to $period and the other parameters in data tests; the latest
    /// complete month by default.
    #[arg(long, value_name = "YYYY-MM")]
    pub period: Option<String>,
    /// Run only tests whose name, dataset, report or file contains one of these.
    #[arg(value_name = "FILTER")]
    pub filters: Vec<String>,
}

fn print(o: &Outcome) {
    let tag = match o.status {
        Status::Pass => "PASS",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
    };
    println!("{tag}  {}  ({})", o.label, o.origin.display());
    if o.status != Status::Pass {
        for line in o.detail.lines() {
            println!("      {line}");
        }
    }
}

pub async fn run(project_dir: &Path, args: TestArgs) -> Result<(), Failure> {
    let project = load_project(project_dir)?;
    let (units, diags) = testing::load_unit_tests(&project);
    if diags.has_errors() {
        for d in diags.sorted() {
            eprintln!("{d}");
        }
        return Err(Failure {
            code: EXIT_USAGE,
            error: anyhow::anyhow!("a report unit test file is invalid"),
        });
    }
    let both = !args.data && !args.unit;
    let selection = Selection {
        data: args.data || both,
        unit: args.unit || both,
        filters: args.filters.clone(),
    };
    let period = match &args.period {
        Some(p) => Period::parse(p, PeriodRule::Calendar).map_err(Failure::usage)?,
        None => Period::containing(
            chrono::Utc::now(),
            project.settings.timezone,
            PeriodRule::Calendar,
        )
        .previous(),
    };
    let outcomes = testing::run(&project, &units, &selection, &period, print)
        .await
        .map_err(Failure::failed)?;
    let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    let (pass, warn, fail) = (
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
    );
    println!("\n{pass} passed, {warn} warned, {fail} failed");
    if outcomes.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "no test matched{}",
            if args.filters.is_empty() {
                ": declare `[[tests]]` in schemas/ or add sql/**/tests/*.toml".to_string()
            } else {
                format!(" {:?}", args.filters)
            }
        )));
    }
    if fail > 0 {
        return Err(Failure::failed(anyhow::anyhow!("{fail} test(s) failed")));
    }
    Ok(())
}
