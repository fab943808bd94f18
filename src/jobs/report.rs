//! A report job for one period: compute its tables (the query stage runs the checks), then
//! publish them into the warehouse, render the email and deliver it; or, for a preview, write
//! the tables, the email and its parts to a folder, publishing and sending nothing.

use std::path::{Path, PathBuf};

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;

use crate::config::pipeline::Pipeline;
use crate::config::Project;
use crate::deliver::{self, DeliverError, DeliverOptions, Delivered};
use crate::query::{self, Computed, Period, QueryError};
use crate::render::{self, Email, Provenance, RenderError};
use crate::warehouse::lease::{Guard, GuardError};
use crate::warehouse::published::{self, Publication};
use crate::warehouse::{Warehouse, WarehouseError};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error(transparent)]
    Guard(#[from] GuardError),
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
    /// What happened to each recipient (nothing for a preview or without `send`).
    pub delivered: Vec<Delivered>,
}

pub struct ReportOptions<'a> {
    /// Write files here instead of publishing and sending.
    pub preview: Option<&'a Path>,
    /// Deliver the email after publishing (a backfill publishes without sending).
    pub send: bool,
    /// Send again to recipients who already have it, on purpose.
    pub resend: bool,
    /// The daemon's lease, asked before each publish and each send.
    pub guard: Guard,
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
    tracing::debug!(report = %pipeline.name, period = %period, seconds = started.elapsed().as_secs_f64(), checks = computed.checks.len(), "computed");
    let mut files = Vec::new();
    let mut versions = Vec::new();
    let mut delivered = Vec::new();
    match opts.preview {
        Some(dir) => {
            let phase =
                |what: &str| tracing::debug!(seconds = started.elapsed().as_secs_f64(), "{what}");
            files = write_preview(project, &computed, &run_id, dir).await?;
            phase("preview tables written");
            let provenance = provenance(project, &wh, pipeline, &computed, &run_id).await?;
            phase("provenance read");
            let email = render::render(project, pipeline, &computed, &provenance)?;
            phase("email rendered");
            files.extend(write_email(project, pipeline, &computed, &email, dir)?);
            phase("email written");
        }
        None => {
            let (t0, t1) = period.bounds(project.settings.timezone);
            let p = Publication {
                period: period.label(),
                period_rule: period.rule_name().to_string(),
                start: t0.timestamp_micros(),
                end: t1.timestamp_micros(),
                run_id: run_id.clone(),
                published_at: crate::clock::now().timestamp_micros(),
            };
            for t in &computed.tables {
                opts.guard.check(&format!("publishing {}", t.name)).await?;
                let v = published::publish(&wh, &t.name, &t.schema, &t.batches, &p).await?;
                versions.push((t.name.clone(), v));
            }
            if opts.send {
                let job = pipeline.as_report().expect("a report pipeline");
                // Only an email needs the provenance (it reads each needed table's log).
                let provenance = provenance(project, &wh, pipeline, &computed, &run_id).await?;
                let email = render::render(project, pipeline, &computed, &provenance)?;
                let recipients: Vec<String> = job.to.iter().chain(&job.cc).cloned().collect();
                delivered = deliver::deliver(
                    project,
                    &pipeline.name,
                    &period.label(),
                    &recipients,
                    &email,
                    &DeliverOptions {
                        resend: opts.resend,
                        guard: opts.guard.clone(),
                    },
                )
                .await?;
            }
        }
    }
    Ok(ReportOutcome {
        run_id,
        computed,
        files,
        published: versions,
        delivered,
    })
}

/// What the email's footer states: run, table versions, each needed dataset's watermark,
/// the SQL files' hashes and the checks passed.
async fn provenance(
    project: &Project,
    wh: &Warehouse,
    pipeline: &Pipeline,
    c: &Computed,
    run_id: &str,
) -> Result<Provenance, ReportError> {
    let job = pipeline.as_report().expect("a report pipeline");
    // A watermark is read from the table version the report computed from (the query stage
    // hands it over); only a needed dataset its SQL did not read is opened here. Each at the
    // same time, as the query stage reads them.
    let watermarks = futures_util::future::try_join_all(job.needs.iter().filter_map(|dataset| {
        let producer = project.producer(dataset)?;
        let read = c.inputs.iter().find(|i| &i.name == dataset);
        Some(async move {
            let id = crate::extract::watermark_id(&producer.name);
            let w = match read {
                Some(input) => match &input.table {
                    Some(table) => crate::warehouse::app_version(table, &id).await?,
                    None => None,
                },
                None => crate::warehouse::app_version(&wh.open(dataset).await?, &id).await?,
            };
            Ok::<_, ReportError>((dataset, w))
        })
    }))
    .await?;
    let mut data_as_of = std::collections::BTreeMap::new();
    for (dataset, w) in watermarks {
        if let Some(t) = w.and_then(chrono::DateTime::from_timestamp_micros) {
            data_as_of.insert(
                dataset.clone(),
                t.with_timezone(&project.settings.timezone)
                    .format("%H:%M %d/%m/%Y")
                    .to_string(),
            );
        }
    }
    Ok(Provenance {
        run_id: run_id.to_string(),
        inputs: c.inputs.clone(),
        data_as_of,
        sql: c
            .tables
            .iter()
            .map(|t| (t.sql_file.display().to_string(), t.sql_sha256.clone()))
            .collect(),
        checks_passed: c
            .checks
            .iter()
            .filter(|x| x.passed)
            .map(|x| x.name.clone())
            .collect(),
    })
}

/// `email.eml` (addressed to the first recipient), `email.html`, `email.txt`, the charts and
/// the attachments, as they would be sent.
fn write_email(
    project: &Project,
    pipeline: &Pipeline,
    c: &Computed,
    email: &Email,
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    let job = pipeline.as_report().expect("a report pipeline");
    let werr = |path: &Path, message: String| ReportError::Write {
        path: path.to_path_buf(),
        message,
    };
    let mail = &project.settings.mail;
    let fitted = deliver::message::fit(
        email,
        mail.max_size_bytes,
        &format!("{}/{}", pipeline.name, c.period.label()),
    );
    let to = job.to.first().cloned().unwrap_or_default();
    let id = deliver::message::message_id(&pipeline.name, &c.period.label(), &to);
    let message = deliver::message::build(&mail.from, &to, &id, &fitted)
        .map_err(|m| werr(&dir.join("email.eml"), m))?;
    let mut out = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<(), ReportError> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| werr(&path, e.to_string()))?;
        out.push(path);
        Ok(())
    };
    put("email.eml", &message.formatted())?;
    // The HTML as a browser shows it: the inline images point at the chart files beside it.
    let mut html = fitted.html.clone();
    for i in &fitted.inline {
        html = html.replace(&format!("cid:{}", i.cid), &format!("chart_{}.png", i.name));
    }
    put("email.html", html.as_bytes())?;
    put("email.txt", fitted.text.as_bytes())?;
    for i in &fitted.inline {
        put(&format!("chart_{}.png", i.name), &i.png)?;
    }
    for a in &fitted.attachments {
        put(&a.name, &a.bytes)?;
    }
    Ok(out)
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
            let df = parstat_plan::read_batches(&ctx, t.schema.clone(), t.batches.clone())
                .map_err(|e| werr(&path, e.to_string()))?;
            let opts = DataFrameWriteOptions::new().with_single_file_output(true);
            let target = path.to_string_lossy().to_string();
            let written = if ext == "csv" {
                parstat_plan::write_csv(df, &target, opts).await
            } else {
                parstat_plan::write_parquet(df, &target, opts).await
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
