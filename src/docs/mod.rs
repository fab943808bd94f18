//! `parstat docs`: a browsable HTML data dictionary generated from the project files:
//! datasets with their columns, Vietnamese labels, allowed values and personal-data
//! treatment; reports with their SQL, inputs, output columns, schedules and recipients;
//! extracts with their sources.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{context, Environment};
use serde_json::json;

use crate::config::pipeline::{ExtractJob, Mode, PeriodChoice, Pipeline, ReportJob, SourceSpec};
use crate::config::schema::{AllowedValue, Personal};
use crate::config::Project;

const TEMPLATE: &str = include_str!("dictionary.html");

/// Writes `dir/index.html` and returns its path.
pub async fn write(project: &Project, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut diags = crate::config::diag::Diagnostics::default();
    let planned = crate::query::plan::check(project, &mut diags).await;
    let datasets = datasets(project);
    let mut reports = Vec::new();
    let mut extracts = Vec::new();
    for p in &project.pipelines {
        if let Some(r) = p.as_report() {
            reports.push(report_entry(project, p, r, &planned));
        }
        if let Some(e) = p.as_extract() {
            extracts.push(extract_entry(p, e));
        }
    }
    let mut env = Environment::new();
    env.add_template("dictionary.html", TEMPLATE)?;
    let html = env.get_template("dictionary.html")?.render(context! {
        project => project.settings.name,
        timezone => project.settings.timezone.name(),
        datasets => datasets,
        reports => reports,
        extracts => extracts,
    })?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("index.html");
    std::fs::write(&path, html)?;
    Ok(path)
}

/// The template's entry for each dataset: its schema, rules, tests and columns.
fn datasets(project: &Project) -> Vec<serde_json::Value> {
    project
        .schemas
        .values()
        .map(|s| {
            json!({
                "name": s.name,
                "label": s.label,
                "description": s.description,
                "primary_key": s.primary_key,
                "partition": s.partition.as_ref().map(|p| p.column.clone()),
                "watermark": s.watermark,
                "producer": project.producer(&s.name).map(|p| p.name.clone()),
                "rules": s.rules.iter().map(|r| json!({"check": r.check, "message": r.message})).collect::<Vec<_>>(),
                "tests": s.tests.iter().map(|t| json!({
                    "name": t.name,
                    "severity": t.severity,
                    "filter": t.filter,
                    "sql": crate::testing::data::failing_sql(&s.name, s, t),
                })).collect::<Vec<_>>(),
                "columns": s.columns.iter().map(|c| json!({
                    "name": c.name,
                    "type": c.type_name,
                    "nullable": c.nullable,
                    "label": c.label,
                    "description": c.description,
                    "source_field": c.source_field,
                    "allowed": c.allowed.iter().flatten().map(|v| {
                        let value = match v { AllowedValue::Int(i) => i.to_string(), AllowedValue::Text(t) => t.clone() };
                        json!({"label": c.value_labels.get(&value), "value": value})
                    }).collect::<Vec<_>>(),
                    "personal": match c.personal { Some(Personal::Hash) => Some("hash"), Some(Personal::Drop) => Some("drop"), None => None },
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The template's entry for a report pipeline: its period, recipients, checks and tables.
fn report_entry(
    project: &Project,
    p: &Pipeline,
    r: &ReportJob,
    planned: &BTreeMap<String, Vec<String>>,
) -> serde_json::Value {
    json!({
        "name": p.name,
        "description": p.description,
        "title": r.title,
        "schedule": p.schedule,
        "period": match r.period { PeriodChoice::PreviousMonth => "tháng trước", PeriodChoice::CurrentMonth => "tháng hiện tại" },
        "period_rule": crate::query::period::rule_name(r.period_rule),
        "needs": r.needs,
        "recipients": r.to.iter().chain(&r.cc).collect::<Vec<_>>(),
        "checks": r.checks.iter().map(|c| json!({"name": c.name, "message": c.message})).collect::<Vec<_>>(),
        "tables": r.sql.iter().map(|f| {
            let name = crate::config::pipeline::table_name(f);
            json!({
                "name": name,
                "file": f.display().to_string(),
                "sql": std::fs::read_to_string(project.root.join(f)).unwrap_or_default(),
                "columns": planned.get(&name),
            })
        }).collect::<Vec<_>>(),
    })
}

/// The template's entry for an extract pipeline: its dataset, connection, source and mode.
fn extract_entry(p: &Pipeline, e: &ExtractJob) -> serde_json::Value {
    let source = match &e.source {
        SourceSpec::Query { .. } => "truy vấn SQL".to_string(),
        SourceSpec::Files { path, .. } => format!("tệp `{path}`"),
        SourceSpec::Http { endpoint, .. } => format!("API `{endpoint}`"),
    };
    json!({
        "name": p.name,
        "description": p.description,
        "dataset": e.dataset,
        "connection": e.connection,
        "source": source,
        "mode": match e.mode { Mode::Merge => "merge", Mode::Replace => "replace", Mode::Append => "append" },
        "schedule": p.schedule,
    })
}
