//! `parstat query "<SQL>" | -f FILE [--period YYYY-MM] [--format table|csv|json|parquet]
//! [-o FILE]`: ad hoc SQL over every warehouse table, published report table and seed, with
//! the period parameters bound when a period is given. Readable on a terminal, exact in files.

use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::dataframe::DataFrameWriteOptions;

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
    /// The SQL (DataFusion dialect).
    #[arg(conflicts_with = "file", required_unless_present = "file")]
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
    let (origin, sql) = match (&args.sql, &args.file) {
        (Some(s), _) => ("query".to_string(), s.clone()),
        (None, Some(f)) => (
            f.display().to_string(),
            std::fs::read_to_string(f)
                .map_err(|e| Failure::usage(anyhow::anyhow!("{}: {e}", f.display())))?,
        ),
        (None, None) => unreachable!("clap requires one"),
    };
    if args.format == Format::Parquet && args.output.is_none() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--format parquet writes a file: give it with -o FILE"
        )));
    }
    let params = match &args.period {
        Some(p) => {
            let rule = match args.rule {
                RuleArg::Calendar => PeriodRule::Calendar,
                RuleArg::Decree09 => PeriodRule::Decree09,
            };
            let period = Period::parse(p, rule).map_err(Failure::usage)?;
            query::params(&period, project.settings.timezone)
        }
        None => vec![],
    };
    let wh = Warehouse::new(&project.root, &project.settings.warehouse_url)?;
    let (ctx, _) = query::session(&project, &wh).await?;
    let (schema, batches) = match query::run_sql(&ctx, &origin, &sql, &params).await {
        Ok(r) => r,
        Err(e @ QueryError::Sql { .. }) => {
            let hint = if args.period.is_none() && sql.contains("$period") {
                "\nhelp: the SQL uses the period parameters: add --period YYYY-MM"
            } else {
                ""
            };
            return Err(Failure::usage(anyhow::anyhow!("{e}{hint}")));
        }
        Err(e) => return Err(Failure::failed(e)),
    };
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
        Format::Table => {
            let text =
                arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| werr(&e))?;
            writeln!(out, "{text}").map_err(|e| werr(&e))?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            eprintln!("{rows} row(s)");
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                w.write(&arrow::array::RecordBatch::new_empty(schema.clone()))
                    .map_err(|e| werr(&e))?;
            }
            for b in &batches {
                w.write(b).map_err(|e| werr(&e))?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in &batches {
                w.write(b).map_err(|e| werr(&e))?;
            }
            w.finish().map_err(|e| werr(&e))?;
        }
        Format::Parquet => {
            let path = args.output.as_ref().expect("checked above");
            let _ = std::fs::remove_file(path);
            let df = ctx
                .read_batches(if batches.is_empty() {
                    vec![arrow::array::RecordBatch::new_empty(schema.clone())]
                } else {
                    batches
                })
                .map_err(|e| werr(&e))?;
            df.write_parquet(
                &path.to_string_lossy(),
                DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
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
