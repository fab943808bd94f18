//! `parstat query "<SQL>" | -f FILE [--period YYYY-MM] [--format table|csv|json|parquet]
//! [-o FILE]`: ad hoc SQL over every warehouse table, published report table and seed, with
//! the period parameters bound when a period is given. Readable on a terminal, exact in files.

mod prompt;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;

use super::{load_project, Failure};
use crate::config::pipeline::PeriodRule;
use crate::query::{self, Period, QueryError};
use crate::warehouse::Warehouse;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// The SQL (DataFusion dialect). Without it (and without -f), an interactive prompt on a
    /// terminal, or the statements read from standard input.
    #[arg(conflicts_with = "file")]
    pub sql: Option<String>,
    /// Read the SQL from this file.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Bind $period, $period_start, $period_end … for this month.
    #[arg(long, value_name = "YYYY-MM")]
    pub period: Option<String>,
    /// Period rule for --period.
    #[arg(long, value_enum, default_value = "calendar")]
    pub rule: RuleArg,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write the result here instead of standard output (required for parquet).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RuleArg {
    Calendar,
    Decree09,
}

pub async fn run(project_dir: &Path, args: QueryArgs) -> Result<(), Failure> {
    let project = load_project(project_dir)?;
    let rule = match args.rule {
        RuleArg::Calendar => PeriodRule::Calendar,
        RuleArg::Decree09 => PeriodRule::Decree09,
    };
    let params = match &args.period {
        Some(p) => {
            let period = Period::parse(p, rule).map_err(Failure::usage)?;
            query::params(&period, project.settings.timezone)
        }
        None => vec![],
    };
    let wh = Warehouse::new(&project.root, &project.settings.warehouse_url)?;
    let (ctx, _) = query::session(&project, &wh)
        .await
        .map_err(Failure::failed)?;
    let Some((origin, sql)) = read_sql(&args)? else {
        return start_prompt(&ctx, args.format, params, rule, project.settings.timezone).await;
    };
    if args.format == Format::Parquet && args.output.is_none() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--format parquet writes a file: give it with -o FILE"
        )));
    }
    let (schema, batches) = run_query(&ctx, &args, &origin, &sql, &params).await?;
    write_output(&ctx, &args, schema, batches).await
}

/// The SQL's origin and text, from the command line or the file; `None` when neither is given.
fn read_sql(args: &QueryArgs) -> Result<Option<(String, String)>, Failure> {
    Ok(match (&args.sql, &args.file) {
        (Some(s), _) => Some(("query".to_string(), s.clone())),
        (None, Some(f)) => Some((
            f.display().to_string(),
            std::fs::read_to_string(f)
                .map_err(|e| Failure::usage(anyhow::anyhow!("{}: {e}", f.display())))?,
        )),
        (None, None) => None,
    })
}

/// Runs the interactive prompt on a terminal, or the statements read from standard input.
async fn start_prompt(
    ctx: &SessionContext,
    format: Format,
    params: Vec<(String, ScalarValue)>,
    rule: PeriodRule,
    tz: chrono_tz::Tz,
) -> Result<(), Failure> {
    let format = match format {
        Format::Parquet => {
            return Err(Failure::usage(anyhow::anyhow!(
                "--format parquet needs the SQL on the command line and -o FILE"
            )))
        }
        f => f,
    };
    let state = prompt::State {
        params,
        format,
        rule,
        tz,
    };
    if std::io::stdin().is_terminal() {
        prompt::interactive(ctx, state).await
    } else {
        prompt::script(ctx, state).await
    }
}

/// Runs the SQL, turning an SQL error into a usage failure with a hint about --period.
async fn run_query(
    ctx: &SessionContext,
    args: &QueryArgs,
    origin: &str,
    sql: &str,
    params: &[(String, ScalarValue)],
) -> Result<(arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>), Failure> {
    match query::run_sql(ctx, origin, sql, params).await {
        Ok(r) => Ok(r),
        Err(e @ QueryError::Sql { .. }) => {
            let hint = if args.period.is_none() && sql.contains("$period") {
                "\nhelp: the SQL uses the period parameters: add --period YYYY-MM"
            } else {
                ""
            };
            Err(Failure::usage(anyhow::anyhow!("{e}{hint}")))
        }
        Err(e) => Err(Failure::failed(e)),
    }
}

/// Writes the result in the chosen format to the output file or standard output.
async fn write_output(
    ctx: &SessionContext,
    args: &QueryArgs,
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<arrow::array::RecordBatch>,
) -> Result<(), Failure> {
    let mut out: Box<dyn Write> = match (&args.output, args.format) {
        (_, Format::Parquet) => Box::new(std::io::sink()),
        (Some(p), _) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| Failure::usage(anyhow::anyhow!("{}: {e}", p.display())))?,
        )),
        (None, _) => Box::new(std::io::stdout().lock()),
    };
    let werr =
        |e: &dyn std::fmt::Display| Failure::failed(anyhow::anyhow!("writing the result: {e}"));
    match args.format {
        Format::Table | Format::Csv | Format::Json => {
            write_result(&mut out, args.format, &schema, &batches).map_err(|e| werr(&e))?;
            if args.format == Format::Table {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                eprintln!("{rows} row(s)");
            }
        }
        Format::Parquet => {
            let path = args.output.as_ref().expect("checked above");
            let _ = std::fs::remove_file(path);
            let df =
                parstat_plan::read_batches(ctx, schema.clone(), batches).map_err(|e| werr(&e))?;
            let options = DataFrameWriteOptions::new().with_single_file_output(true);
            parstat_plan::write_parquet(df, &path.to_string_lossy(), options)
                .await
                .map_err(|e| werr(&e))?;
        }
    }
    out.flush().map_err(|e| werr(&e))?;
    if let Some(p) = &args.output {
        println!("{}", p.display());
    }
    Ok(())
}

/// Writes a result as a text table, CSV (with header) or JSON lines.
pub(crate) fn write_result(
    out: &mut dyn Write,
    format: Format,
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
) -> Result<(), anyhow::Error> {
    match format {
        Format::Table => {
            let text = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches(&[
                    arrow::array::RecordBatch::new_empty(schema.clone()),
                ])?
            } else {
                arrow::util::pretty::pretty_format_batches(batches)?
            };
            writeln!(out, "{text}")?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            if batches.is_empty() {
                w.write(&arrow::array::RecordBatch::new_empty(schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => anyhow::bail!("parquet is written to a file"),
    }
    Ok(())
}
