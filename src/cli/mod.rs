//! The command line: argument parsing, logging set-up, and exit codes (0 ok, 1 a job or test
//! failed, 2 bad configuration or usage). Each subcommand only builds a request for the library.

mod backfill;
mod check;
mod cluster;
mod demo;
mod extract;
mod query;
mod report;
mod run;
mod runs;
mod test;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "parstat",
    version,
    about = "PAR and investment statistics of a province, from source systems to leaders' inboxes"
)]
pub struct Cli {
    /// Project folder (holds parstat.toml, pipelines/, schemas/, sql/, reports/).
    #[arg(long, global = true, default_value = ".")]
    pub project: PathBuf,
    /// More logging (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate the demo province's source data, run every job over its history and deliver
    /// the latest complete month to the outbox.
    Demo(demo::DemoArgs),
    /// Validate parstat.toml, pipelines/ and schemas/; no job runs.
    Check {
        /// Also ask the Ballista scheduler of `[engine]` whether it answers.
        #[arg(long)]
        ping: bool,
    },
    /// Move datasets from their sources into the warehouse.
    Extract(extract::ExtractArgs),
    /// Compute one report for one period: publish it, or preview its tables in a folder.
    Report(report::ReportArgs),
    /// Everything a period needs: extracts, then each report (emailed), skipping what succeeded.
    Run(run::RunArgs),
    /// Report jobs over a range of periods; sends nothing unless --send.
    Backfill(backfill::BackfillArgs),
    /// A browsable HTML data dictionary of the project.
    Docs {
        /// Output folder.
        #[arg(
            short = 'o',
            long = "output",
            default_value = "docs",
            value_name = "DIR"
        )]
        output: PathBuf,
    },
    /// Ad hoc SQL over the warehouse, with the period parameters bound.
    Query(query::QueryArgs),
    /// Data tests declared in schemas/ and report unit tests beside the SQL.
    Test(test::TestArgs),
    /// The scheduler daemon: every job on its schedule, one scheduler at a time.
    Serve,
    /// The run history: `runs list`, `runs show RUN_ID`.
    Runs(runs::RunsArgs),
    /// A Ballista cluster for `[engine] kind = "ballista"`: `cluster scheduler`, `cluster
    /// executor`.
    Cluster(cluster::ClusterArgs),
}

/// Exit codes of the interface.
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// An error with the exit code it calls for.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }
    pub fn failed(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: EXIT_FAILED,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::failed(e)
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error,deltalake_core=off,buoyant_kernel=off",
        // delta-rs (and its kernel) logs an ERROR when it opens a table that does not exist yet (every first
        // run); its real failures reach us as errors, reported with their context.
        (_, 0) => "warn,parstat=info,deltalake_core=off,buoyant_kernel=off",
        (_, 1) => "info,deltalake_core=off,buoyant_kernel=off",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARSTAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        // The same lines, kept in memory for failure alerts and the run history.
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(crate::logtail::Ring)
                .with_ansi(false)
                .with_target(false),
        )
        .try_init();
}

/// The stack of every thread that plans or runs SQL. DataFusion plans an expression by
/// recursion, a few KiB per level: tokio's default 2 MiB held a chain of about 400 operators
/// in a release build, this holds twice [`crate::query::MAX_CHAIN`], the most a SQL text may
/// chain. It is address space: only the pages a deep plan touches take memory.
pub const THREAD_STACK: usize = 32 << 20;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    init_logging(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    // The command itself runs on a thread with the workers' stack, not on the main thread's.
    let outcome = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("parstat".into())
            .stack_size(THREAD_STACK)
            .spawn_scoped(s, || runtime.block_on(run(cli)))
            .map(|t| t.join())
    });
    let outcome = match outcome {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => {
            eprintln!("Error: cannot start the command's thread: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    // Everything the command started has been awaited. Waiting for the runtime's idle threads
    // to wind down, each tidying its allocator heap, would only delay the exit.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("Error: {}", crate::error::report(f.error.as_ref()));
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if matches!(
        cli.command,
        Command::Report(_) | Command::Query(_) | Command::Test(_)
    ) {
        crate::alloc::short_run();
    }
    match cli.command {
        Command::Demo(args) => demo::run(&cli.project, args).await,
        Command::Check { ping } => check::run(&cli.project, ping).await,
        Command::Extract(args) => extract::run(&cli.project, args).await,
        Command::Report(args) => report::run(&cli.project, args).await,
        Command::Backfill(args) => backfill::run(&cli.project, args).await,
        Command::Run(args) => run::run(&cli.project, args).await,
        Command::Query(args) => query::run(&cli.project, args).await,
        Command::Docs { output } => {
            let project = load_project(&cli.project)?;
            let dir = if output.is_absolute() {
                output
            } else {
                cli.project.join(output)
            };
            let path = crate::docs::write(&project, &dir)
                .await
                .map_err(Failure::failed)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Serve => {
            let project = load_project(&cli.project)?;
            crate::serve::serve(project).await.map_err(Failure::failed)
        }
        Command::Runs(args) => runs::run(&cli.project, args).await,
        Command::Test(args) => test::run(&cli.project, args).await,
        Command::Cluster(args) => cluster::run(args).await,
    }
}

/// Loads the project, printing every diagnostic; configuration errors exit with code 2.
pub fn load_project(dir: &std::path::Path) -> Result<crate::config::Project, Failure> {
    let loaded = crate::config::load(dir);
    for d in &loaded.diagnostics {
        if d.severity == crate::config::Severity::Error {
            eprintln!("{d}");
        }
    }
    loaded.project.ok_or_else(|| {
        Failure::usage(anyhow::anyhow!(
            "the project configuration has errors; run `parstat check`"
        ))
    })
}
