//! A report job for one period: compute its tables (the query stage runs the checks), then
//! either publish them into the warehouse or, for a preview, write them as CSV and Parquet
//! files with a manifest that states what was read and computed.

use std::path::{Path, PathBuf};

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;

use crate::config::pipeline::Pipeline;
use crate::config::Project;
use crate::query::{self, Computed, Period, QueryError};
use crate::warehouse::published::{self, Publication};
use crate::warehouse::{Warehouse, WarehouseError};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// What the job did.
#[derive(Debug)]
pub struct ReportOutcome {
    pub run_id: String,
    pub computed: Computed,
    /// Files written by a preview.
    pub files: Vec<PathBuf>,
    /// Published table versions, by report table.
    pub published: Vec<(String, u64)>,
}

pub struct ReportOptions<'a> {
    /// Write files here instead of publishing.
    pub preview: Option<&'a Path>,
}

pub async fn run(
    project: &Project,
    pipeline: &Pipeline,
    period: Period,
    opts: &ReportOptions<'_>,
) -> Result<ReportOutcome, ReportError> {
    let wh = Warehouse::new(&project.root, &project.settings.warehouse_url)?;
    let run_id = uuid::Uuid::now_v7().to_string();
    let started = std::time::Instant::now();
    let computed = query::compute(project, &wh, pipeline, period).await?;
    tracing::info!(report = %pipeline.name, period = %period, seconds = started.elapsed().as_secs_f64(), checks = computed.checks.len(), "computed");
    let mut files = Vec::new();
    let mut versions = Vec::new();
    match opts.preview {
        Some(dir) => {
            files = write_preview(project, &computed, &run_id, dir).await?;
        }
        None => {
            let (t0, t1) = period.bounds(project.settings.timezone);
            let p = Publication {
                period: period.label(),
                period_rule: period.rule_name().to_string(),
                start: t0.timestamp_micros(),
                end: t1.timestamp_micros(),
                run_id: run_id.clone(),
                published_at: chrono::Utc::now().timestamp_micros(),
            };
            for t in &computed.tables {
                let v = published::publish(&wh, &t.name, &t.schema, &t.batches, &p).await?;
                versions.push((t.name.clone(), v));
            }
        }
    }
    Ok(ReportOutcome {
        run_id,
        computed,
        files,
        published: versions,
    })
}

/// `DIR/<table>.csv`, `DIR/<table>.parquet` and `DIR/report.json`.
async fn write_preview(
    project: &Project,
    c: &Computed,
    run_id: &str,
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    let werr = |path: &Path, message: String| ReportError::Write {
        path: path.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| werr(dir, e.to_string()))?;
    let ctx = SessionContext::new();
    let mut files = Vec::new();
    for t in &c.tables {
        for ext in ["csv", "parquet"] {
            let path = dir.join(format!("{}.{ext}", t.name));
            // The writers refuse to replace a file: a rerun of the preview replaces it.
            let _ = std::fs::remove_file(&path);
            let df = ctx
                .read_batches(if t.batches.is_empty() {
                    vec![arrow::array::RecordBatch::new_empty(t.schema.clone())]
                } else {
                    t.batches.clone()
                })
                .map_err(|e| werr(&path, e.to_string()))?;
            let opts = DataFrameWriteOptions::new().with_single_file_output(true);
            let target = path.to_string_lossy().to_string();
            let written = if ext == "csv" {
                df.write_csv(&target, opts, None).await
            } else {
                df.write_parquet(&target, opts, None).await
            };
            written.map_err(|e| werr(&path, e.to_string()))?;
            files.push(path);
        }
    }
    let (t0, t1) = c.period.bounds(project.settings.timezone);
    let manifest = serde_json::json!({
        "report": c.report,
        "period": c.period.label(),
        "period_rule": c.period.rule_name(),
        "covers": c.period.covered_text(),
        "period_start": t0.to_rfc3339(),
        "period_end": t1.to_rfc3339(),
        "run_id": run_id,
        "tables": c.tables.iter().map(|t| serde_json::json!({
            "name": t.name,
            "rows": t.rows(),
            "no_data": t.is_empty(),
            "sql_file": t.sql_file.display().to_string(),
            "sql_sha256": t.sql_sha256,
            "columns": t.schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "checks": c.checks,
        "inputs": c.inputs,
    });
    let path = dir.join("report.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| werr(&path, e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| werr(&path, e.to_string()))?;
    files.push(path);
    Ok(files)
}
