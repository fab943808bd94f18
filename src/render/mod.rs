//! The render stage: a computed report becomes an email a leader reads on a phone or in
//! Outlook: HTML from the report's minijinja template (tables and inline styles, charts as
//! inline PNG images), a plain-text alternative with the same figures, an XLSX workbook and
//! the CSVs as attachments, and a provenance footer.

pub mod chart;
pub mod format;
pub mod table;
pub mod workbook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{context, Environment, Value};
use serde::Serialize;

use crate::config::pipeline::{Pipeline, ReportJob};
use crate::config::Project;
use crate::query::{Computed, InputTable};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{path}: {message}")]
    Template { path: PathBuf, message: String },
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
    #[error("workbook: {0}")]
    Workbook(String),
    #[error("{table}.csv: {message}")]
    Csv { table: String, message: String },
}

/// An image inside the message, referenced from the HTML as `cid:<cid>`.
#[derive(Debug, Clone)]
pub struct Inline {
    pub cid: String,
    pub name: String,
    pub png: Vec<u8>,
}

/// A file attached to the message.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// The rendered email, before addressing.
#[derive(Debug, Clone)]
pub struct Email {
    pub subject: String,
    pub html: String,
    pub text: String,
    pub inline: Vec<Inline>,
    pub attachments: Vec<Attachment>,
}

/// Where each input's data stands, for the footer.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub run_id: String,
    pub inputs: Vec<InputTable>,
    /// Dataset -> its watermark (data as of), local time.
    pub data_as_of: BTreeMap<String, String>,
    pub sql: Vec<(String, String)>,
    pub checks_passed: Vec<String>,
}

fn environment(root: &Path) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_loader(minijinja::path_loader(root));
    // Every number filter shows a missing value (NULL: nothing to compute) as a dash.
    fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
        v.map(f).unwrap_or_else(|| "—".into())
    }
    env.add_filter("vn_int", |v: Option<f64>| {
        opt(v, |v| format::integer(v.round() as i128))
    });
    env.add_filter("vn_num", |v: Option<f64>, places: Option<usize>| {
        opt(v, |v| format::decimal(v, places.unwrap_or(2)))
    });
    env.add_filter("vn_pct", |v: Option<f64>| opt(v, format::percent));
    env.add_filter("vn_billion", |v: Option<f64>| opt(v, format::billion_vnd));
    env.add_filter("vn_usd", |v: Option<f64>| opt(v, format::million_usd));
    env.add_filter(
        "vn_change",
        |v: Option<f64>, prev: Option<f64>, places: Option<usize>| match v {
            Some(v) => format::change(v, prev, places.unwrap_or(0)).unwrap_or_default(),
            None => String::new(),
        },
    );
    env.add_filter("vn_date", |s: String| {
        chrono::NaiveDate::parse_from_str(&s[..s.len().min(10)], "%Y-%m-%d")
            .map(format::date)
            .unwrap_or(s)
    });
    env
}

/// The period as templates see it.
fn period_context(c: &Computed) -> Value {
    let p = &c.period;
    context! {
        label => p.label(),
        year => p.year,
        month => p.month,
        rule => p.rule_name(),
        covers => p.covered_text(),
        month_text => p.month_text(),
        first_day => format::date(p.first_day()),
        last_day => format::date(p.last_day()),
    }
}

/// The subject line: the job's `title` rendered with the period.
pub fn subject(job: &ReportJob, c: &Computed) -> Result<String, RenderError> {
    let env = Environment::new();
    env.render_str(&job.title, context! { period => period_context(c) })
        .map_err(|e| RenderError::Template {
            path: PathBuf::from("title"),
            message: e.to_string(),
        })
}

/// Renders `pipeline`'s email for `c`.
pub fn render(
    project: &Project,
    pipeline: &Pipeline,
    c: &Computed,
    provenance: &Provenance,
) -> Result<Email, RenderError> {
    let job = pipeline.as_report().expect("a report pipeline");
    let tz = project.settings.timezone;
    let subject = subject(job, c)?;
    let mut tables = BTreeMap::new();
    let mut no_data = BTreeMap::new();
    for t in &c.tables {
        tables.insert(t.name.clone(), table::rows(&t.batches, tz));
        no_data.insert(t.name.clone(), t.is_empty());
    }
    let inline = charts(c, &tables)?;
    let charts: BTreeMap<String, String> = inline
        .iter()
        .map(|i| (i.name.clone(), format!("cid:{}", i.cid)))
        .collect();
    let ctx = context! {
        title => subject.clone(),
        project => project.settings.name.clone(),
        report => pipeline.name.clone(),
        period => period_context(c),
        tables => tables,
        no_data => no_data,
        charts => charts,
        provenance => provenance,
    };
    let env = environment(&project.root);
    let render = |path: &Path| -> Result<String, RenderError> {
        let name = path.to_string_lossy().replace('\\', "/");
        env.get_template(&name)
            .and_then(|t| t.render(&ctx))
            .map_err(|e| RenderError::Template {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })
    };
    let html = render(&job.template)?;
    let text = render(&job.template.with_extension("txt"))?;
    let attachments = attachments(project, c)?;
    Ok(Email {
        subject,
        html,
        text,
        inline,
        attachments,
    })
}

/// The charts a report's tables call for: the 12-month trend and agencies compared for the
/// PAR report, valid capital by sector for the investment report.
fn charts(
    c: &Computed,
    tables: &BTreeMap<String, Vec<table::Row>>,
) -> Result<Vec<Inline>, RenderError> {
    let mut out = Vec::new();
    let tag = format!("{}.{}", c.report, c.period.label());
    if let Some(rows) = tables.get("trend_monthly").filter(|r| !r.is_empty()) {
        out.push(trend_chart(rows, &tag)?);
    }
    if let Some(rows) = tables.get("dossier_monthly") {
        out.extend(agencies_chart(rows, &tag)?);
    }
    if let Some(rows) = tables.get("investment_monthly") {
        out.extend(sectors_chart(rows, &tag)?);
    }
    Ok(out)
}

/// The 12-month chart of dossiers received and resolved, from `trend_monthly`.
fn trend_chart(rows: &[table::Row], tag: &str) -> Result<Inline, RenderError> {
    let periods: Vec<String> = rows.iter().map(|r| table::text(r, "period")).collect();
    let col = |c: &str| -> Vec<f64> {
        rows.iter()
            .map(|r| table::num(r, c).unwrap_or(0.0))
            .collect()
    };
    let png = chart::trend(
        "trend",
        "Hồ sơ tiếp nhận và đã giải quyết, 12 tháng",
        &periods,
        &[
            ("Tiếp nhận mới", col("received")),
            ("Đã giải quyết", col("resolved")),
        ],
    )?;
    Ok(Inline {
        cid: format!("trend.{tag}@parstat"),
        name: "trend".into(),
        png,
    })
}

/// The provincial agencies' on-time rates from `dossier_monthly`, when there are any.
fn agencies_chart(rows: &[table::Row], tag: &str) -> Result<Option<Inline>, RenderError> {
    let mut items: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| {
            table::text(r, "group_kind") == "agency" && table::text(r, "agency_level") == "province"
        })
        .filter_map(|r| Some((table::text(r, "group_name"), table::num(r, "on_time_rate")?)))
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if items.is_empty() {
        return Ok(None);
    }
    let png = chart::bars(
        "agencies",
        "Tỷ lệ giải quyết đúng hạn của các sở, ban, ngành (%)",
        &items,
        100.0,
    )?;
    Ok(Some(Inline {
        cid: format!("agencies.{tag}@parstat"),
        name: "agencies".into(),
        png,
    }))
}

/// The 12 sectors with the most valid registered capital from `investment_monthly`, when
/// there are any.
fn sectors_chart(rows: &[table::Row], tag: &str) -> Result<Option<Inline>, RenderError> {
    let mut items: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| table::text(r, "group_kind") == "sector")
        .filter_map(|r| {
            Some((
                table::text(r, "group_name"),
                table::num(r, "valid_capital_vnd")? / 1e9,
            ))
        })
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    items.truncate(12);
    let Some(max) = items.first().map(|x| x.1 * 1.1) else {
        return Ok(None);
    };
    let png = chart::bars(
        "sectors",
        "Vốn đăng ký còn hiệu lực theo ngành (tỷ đồng)",
        &items,
        max.max(1.0),
    )?;
    Ok(Some(Inline {
        cid: format!("sectors.{tag}@parstat"),
        name: "sectors".into(),
        png,
    }))
}

/// The workbook and each table as CSV, named in Vietnamese with the period.
fn attachments(project: &Project, c: &Computed) -> Result<Vec<Attachment>, RenderError> {
    let stem = attachment_stem(&c.report, c);
    let mut out = vec![Attachment {
        name: format!("{stem}.xlsx"),
        content_type: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet".into(),
        bytes: workbook::workbook(c, project.settings.timezone)
            .map_err(|e| RenderError::Workbook(e.to_string()))?,
    }];
    for t in &c.tables {
        out.push(Attachment {
            name: format!("{}_{}.csv", t.name, c.period.label()),
            content_type: "text/csv; charset=utf-8".into(),
            bytes: csv_bytes(t, project.settings.timezone)?,
        });
    }
    Ok(out)
}

/// "Báo cáo CCHC tháng 10-2026": the workbook's file name, with diacritics.
pub fn attachment_stem(report: &str, c: &Computed) -> String {
    let what = match report {
        "monthly_par" => "Báo cáo giải quyết TTHC",
        "monthly_investment" => "Báo cáo thu hút đầu tư",
        other => other,
    };
    format!("{what} tháng {:02}-{}", c.period.month, c.period.year)
}

/// Text that Excel would take for a formula (`=`, `+`, `-`, `@`, a tab or a carriage return
/// first: an agency name from the source can be `=HYPERLINK(...)`), shown as text instead by a
/// leading apostrophe.
fn formula_safe(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

/// A table as CSV with a UTF-8 byte-order mark, so that Excel shows the diacritics; text
/// cells are formula-safe, numbers are written as they are.
pub fn csv_bytes(t: &crate::query::ResultTable, tz: chrono_tz::Tz) -> Result<Vec<u8>, RenderError> {
    let err = |e: csv::Error| RenderError::Csv {
        table: t.name.clone(),
        message: e.to_string(),
    };
    let mut w = csv::Writer::from_writer(b"\xEF\xBB\xBF".to_vec());
    let names: Vec<String> = t.schema.fields().iter().map(|f| f.name().clone()).collect();
    w.write_record(&names).map_err(err)?;
    for row in table::rows(&t.batches, tz) {
        w.write_record(names.iter().map(|n| match row.get(n) {
            Some(serde_json::Value::String(s)) => formula_safe(s),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        }))
        .map_err(err)?;
    }
    w.into_inner().map_err(|e| RenderError::Csv {
        table: t.name.clone(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn csv_text_that_looks_like_a_formula_stays_text() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("agency_name", DataType::Utf8, true),
            Field::new("delta", DataType::Int64, true),
        ]));
        let names = [
            "=HYPERLINK(\"http://x\",\"Sở\")",
            "+84 1",
            "-cmd",
            "@SUM(A1)",
            "\tx",
            "Sở Tư pháp",
        ];
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(names.to_vec())),
                Arc::new(Int64Array::from(vec![-5, 1, 2, 3, 4, 5])),
            ],
        )
        .unwrap();
        let t = crate::query::ResultTable {
            name: "t".into(),
            sql_file: "t.sql".into(),
            sql_sha256: String::new(),
            schema,
            batches: vec![batch],
        };
        let bytes = csv_bytes(&t, chrono_tz::Asia::Ho_Chi_Minh).unwrap();
        let text = String::from_utf8(bytes[3..].to_vec()).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<(String, String)> = r
            .records()
            .map(|r| {
                let r = r.unwrap();
                (r[0].to_string(), r[1].to_string())
            })
            .collect();
        for (i, name) in names.iter().enumerate() {
            let want = if name.starts_with("Sở") {
                name.to_string()
            } else {
                format!("'{name}")
            };
            assert_eq!(rows[i].0, want);
        }
        // A negative number is a number, not a formula.
        assert_eq!(rows[0].1, "-5");
    }
}
