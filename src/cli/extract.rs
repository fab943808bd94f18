//! `parstat extract <pipeline>... | --all [--full]`: sources into the warehouse, one summary
//! line per job on stdout.

use std::io::IsTerminal;
use std::path::Path;

use super::{load_project, Failure};
use crate::config::diag::suggest;
use crate::extract::ExtractOptions;

#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    /// Extract pipelines to run (file names in pipelines/ without .toml).
    pub pipelines: Vec<String>,
    /// Run every extract pipeline.
    #[arg(long, conflicts_with = "pipelines")]
    pub all: bool,
    /// Reload everything: files already loaded, rows older than the watermark.
    #[arg(long)]
    pub full: bool,
    /// Rows per Delta commit (default 150000): smaller commits, less memory.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub chunk_rows: usize,
}

/// Every extract pipeline, incrementally: the first step of `demo` and `run`.
pub async fn all(project_dir: &Path) -> Result<(), Failure> {
    run(
        project_dir,
        ExtractArgs {
            pipelines: vec![],
            all: true,
            full: false,
            chunk_rows: 0,
        },
    )
    .await
}

pub async fn run(project_dir: &Path, args: ExtractArgs) -> Result<(), Failure> {
    let project = load_project(project_dir)?;
    let extracts: Vec<&str> = project
        .pipelines
        .iter()
        .filter(|p| p.as_extract().is_some())
        .map(|p| p.name.as_str())
        .collect();
    let names: Vec<String> = if args.all {
        extracts.iter().map(|s| s.to_string()).collect()
    } else if args.pipelines.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "name the pipelines to extract, or pass --all ({})",
            extracts.join(", ")
        )));
    } else {
        args.pipelines.clone()
    };
    for n in &names {
        if !extracts.contains(&n.as_str()) {
            return Err(Failure::usage(anyhow::anyhow!(
                "`{n}` is not an extract pipeline: {}",
                suggest(n, &extracts)
            )));
        }
    }
    let opts = ExtractOptions {
        full: args.full,
        progress: std::io::stderr().is_terminal(),
        chunk_rows: args.chunk_rows,
        guard: Default::default(),
    };
    let mut failed = 0;
    for n in &names {
        let p = project.pipeline(n).expect("checked above");
        let result = crate::jobs::extract(&project, p, &opts).await;
        match result {
            Ok(s) => {
                tracing::info!(
                    pipeline = %s.pipeline,
                    dataset = %s.dataset,
                    rows_read = s.rows_read,
                    rows_written = s.rows_written,
                    quarantined = s.rows_quarantined,
                    files_loaded = s.files_loaded,
                    bytes_read = s.bytes_read,
                    seconds = s.seconds,
                    watermark = s.watermark.as_deref().unwrap_or("none"),
                    table_version = s.table_version.map(|v| v as i64).unwrap_or(-1),
                    "extract done"
                );
                println!(
                    "{}: {} read, {} written, {} quarantined, {} files loaded ({} already loaded), {:.1} MB in {:.1} s; watermark {}; table `{}` version {}",
                    s.pipeline,
                    s.rows_read,
                    s.rows_written,
                    s.rows_quarantined,
                    s.files_loaded,
                    s.files_skipped,
                    s.bytes_read as f64 / 1e6,
                    s.seconds,
                    s.watermark.as_deref().unwrap_or("none"),
                    s.dataset,
                    s.table_version.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: extract `{n}` failed: {}", crate::error::report(&e));
            }
        }
    }
    if failed > 0 {
        return Err(Failure::failed(anyhow::anyhow!(
            "{failed} of {} extract jobs failed",
            names.len()
        )));
    }
    Ok(())
}
