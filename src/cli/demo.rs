//! `parstat demo`: the main job on the embedded defaults. Generates the demo province's source
//! data (and loads it into databases on request), checks the project, extracts everything,
//! backfills the year before the latest complete month without sending, and delivers that
//! month's reports to the outbox.

use chrono::NaiveDate;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use super::Failure;
use crate::demo::{self, DemoOptions};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Number of dossiers over the whole history (2019-01 to --until).
    #[arg(long, default_value_t = 300_000)]
    pub dossiers: u64,
    /// Seed of the generator: the same seed and --until give the same files.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Only generate the source data; do not run the jobs.
    #[arg(long)]
    pub data_only: bool,
    /// Also load dossiers and votes into this PostgreSQL database (one-stop-shop schema).
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// PostgreSQL schema for --postgres.
    #[arg(long, default_value = "motcua", value_name = "NAME")]
    pub pg_schema: String,
    /// Also load dossiers and votes into this MariaDB/MySQL database.
    #[arg(long, value_name = "URL")]
    pub mysql: Option<String>,
    /// Share of malformed rows to add (missing dates, unknown status codes, finish before
    /// receipt, broken encoding), e.g. 0.01.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub bad_rows: f64,
    /// Last month of data, YYYY-MM (default: the last complete month).
    #[arg(long, value_name = "YYYY-MM")]
    pub until: Option<String>,
    /// Output folder, relative to the project.
    #[arg(long, default_value = "data", value_name = "DIR")]
    pub out: PathBuf,
    /// Run even where the demo would overwrite what it did not make: a data folder without
    /// the demo's manifest, database tables without its marker, or a project that mails
    /// over SMTP.
    #[arg(long)]
    pub force: bool,
}

fn parse_month(s: &str) -> Option<(i32, u32)> {
    let (y, m) = s.split_once('-')?;
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    (y > 1900 && (1..=12).contains(&m) && m.to_string().len() <= 2 && s.len() == 7)
        .then_some((y, m))
}

pub async fn run(project: &Path, args: DemoArgs) -> Result<(), Failure> {
    // Today in the project's time zone decides the last complete month.
    let tz = crate::config::Project::load(project)
        .map(|p| p.settings.timezone)
        .unwrap_or(chrono_tz::Asia::Ho_Chi_Minh);
    let today: NaiveDate = chrono::Utc::now().with_timezone(&tz).date_naive();
    let until = match &args.until {
        None => demo::last_complete_month(today),
        Some(s) => parse_month(s).ok_or_else(|| {
            Failure::usage(anyhow::anyhow!(
                "--until {s}: expected YYYY-MM, e.g. 2026-10"
            ))
        })?,
    };
    if !(0.0..=1.0).contains(&args.bad_rows) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--bad-rows {}: give a share between 0 and 1, e.g. 0.01",
            args.bad_rows
        )));
    }
    let opts = DemoOptions {
        seed: args.seed,
        dossiers: args.dossiers,
        until,
        bad_rows: args.bad_rows,
        progress: std::io::stderr().is_terminal(),
        force: args.force,
    };
    let out = project.join(&args.out);
    if !args.force {
        refuse_what_is_not_the_demos(project, &out, args.data_only)?;
    }
    let started = std::time::Instant::now();
    let manifest = tokio::task::spawn_blocking({
        let opts = opts.clone();
        let out = out.clone();
        move || demo::generate_files(&opts, &out)
    })
    .await
    .map_err(|e| Failure::failed(anyhow::anyhow!("generator stopped: {e}")))??;
    tracing::info!(
        dossiers = manifest
            .datasets
            .get("dossier")
            .map(|d| d.rows)
            .unwrap_or(0),
        seconds = started.elapsed().as_secs_f64(),
        "demo data generated"
    );
    println!("{}", out.display());
    if let Some(url) = &args.postgres {
        let (rows, votes) = demo::db::load_postgres(url, &args.pg_schema, &opts).await?;
        tracing::info!(rows, votes, schema = %args.pg_schema, "loaded into PostgreSQL");
        println!(
            "postgres: {rows} dossiers, {votes} votes in schema {}",
            args.pg_schema
        );
    }
    if let Some(url) = &args.mysql {
        let (rows, votes) = demo::db::load_mysql(url, &opts).await?;
        tracing::info!(rows, votes, "loaded into MariaDB/MySQL");
        println!("mysql: {rows} dossiers, {votes} votes");
    }
    if args.data_only {
        return Ok(());
    }
    super::check::run(project, false).await?;
    whole_job(project, until).await
}

/// The demo writes `out` and, unless `--data-only`, delivers: in a real project that would
/// overwrite the province's exports and mail its leaders. Refused unless `--force`.
fn refuse_what_is_not_the_demos(
    project: &Path,
    out: &Path,
    data_only: bool,
) -> Result<(), Failure> {
    let has_files = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if has_files && !out.join("manifest.json").is_file() {
        return Err(Failure::usage(anyhow::anyhow!(
            "{} holds files that `parstat demo` did not write (no manifest.json): the demo would overwrite them. Give another --out, or pass --force",
            out.display()
        )));
    }
    if !data_only {
        if let Ok(p) = crate::config::Project::load(project) {
            if p.settings.mail.transport == crate::config::settings::Transport::Smtp {
                return Err(Failure::usage(anyhow::anyhow!(
                    "this project mails over SMTP (`[mail] transport = \"smtp\"`): the demo would send its made-up report to the recipients of pipelines/. Use --data-only, the outbox transport, or pass --force"
                )));
            }
        }
    }
    Ok(())
}

/// Extract, backfill the 12 months before `until` without sending, deliver `until`.
async fn whole_job(project_dir: &Path, until: (i32, u32)) -> Result<(), Failure> {
    if std::env::var_os("PARSTAT_PII_KEY").is_none() {
        // The demo's people are generated: a key made up for this run keeps the warehouse
        // free of their names and IDs. Set PARSTAT_PII_KEY for hashes stable across runs.
        let key = uuid::Uuid::new_v4().simple().to_string();
        tracing::warn!("PARSTAT_PII_KEY is not set: the demo hashes personal data with a random key for this run");
        // Set before any job reads it; nothing else in the process writes the environment.
        std::env::set_var("PARSTAT_PII_KEY", key);
    }
    super::extract::all(project_dir).await?;
    let project = super::load_project(project_dir)?;
    let latest = crate::query::Period::new(
        until.0,
        until.1,
        crate::config::pipeline::PeriodRule::Calendar,
    );
    let (from, to) = (latest.offset(-12).label(), latest.previous().label());
    let tasks = super::backfill::plan(&project, &[], true, &from, &to).await?;
    let outcome = crate::jobs::backfill::run(
        &project,
        &tasks,
        2,
        false,
        std::sync::Arc::new(|_: &crate::jobs::backfill::Task, _| {}),
    )
    .await?;
    println!(
        "backfill {from}..{to}: {} published, {} already done, nothing sent",
        outcome.succeeded, outcome.skipped
    );
    if let Some((job, period, e)) = outcome.failed.first() {
        return Err(Failure::failed(anyhow::anyhow!(
            "{job} {period}: {}",
            crate::error::report(e)
        )));
    }
    for p in project.pipelines.iter().filter(|p| p.as_report().is_some()) {
        let rule = p.as_report().expect("filtered").period_rule;
        let period = crate::query::Period::new(until.0, until.1, rule);
        let o = crate::jobs::backfill::run_one(&project, p, period, true)
            .await
            .map_err(|e| {
                Failure::failed(anyhow::anyhow!(
                    "{} {}: {}",
                    p.name,
                    period.label(),
                    crate::error::report(&e)
                ))
            })?;
        for d in &o.delivered {
            match &d.file {
                Some(f) => println!("{}", f.display()),
                None => println!("{}: {:?}", d.recipient, d.outcome),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_month;

    #[test]
    fn parses_months() {
        assert_eq!(parse_month("2026-10"), Some((2026, 10)));
        assert_eq!(parse_month("2026-13"), None);
        assert_eq!(parse_month("2026-1"), None);
        assert_eq!(parse_month("26-10"), None);
    }
}
