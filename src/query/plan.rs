//! Planning every report's SQL against the schemas, without data and without running it, for
//! `parstat check`: unknown tables, columns, functions, type errors and unknown parameters
//! come back as `sql/par/x.sql:LINE:COL: error: …` with the closest valid name.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::config::diag::{closest, Diagnostics, Source};
use crate::config::Project;
use crate::warehouse;

/// The names of the parameters parstat binds: those of `params`, for any period.
fn parameters() -> Vec<String> {
    let any = super::Period::new(2000, 1, crate::config::pipeline::PeriodRule::Calendar);
    super::params(&any, chrono_tz::UTC)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn empty(
    ctx: &SessionContext,
    columns: &mut Vec<String>,
    name: &str,
    schema: arrow::datatypes::SchemaRef,
) {
    columns.extend(schema.fields().iter().map(|f| f.name().clone()));
    if let Ok(t) = MemTable::try_new(schema, vec![vec![]]) {
        let _ = ctx.deregister_table(name);
        let _ = ctx.register_table(name, Arc::new(t));
    }
}

/// Plans each report's SQL files in order (each result a table for the next) and its checks;
/// returns each planned report table's columns.
pub async fn check(
    project: &Project,
    diags: &mut Diagnostics,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut planned = std::collections::BTreeMap::new();
    let (ctx, mut known) = planning_session(project);
    for p in &project.pipelines {
        let Some(job) = p.as_report() else { continue };
        for file in &job.sql {
            let Ok(text) = std::fs::read_to_string(project.root.join(file)) else {
                continue; // reported as a missing file
            };
            let src = Source::new(file.clone(), text);
            if let Some(columns) = plan_file(&ctx, &src, &mut known, diags).await {
                planned.insert(crate::config::pipeline::table_name(file), columns);
            }
        }
        plan_checks(&ctx, project, p, job, diags).await;
    }
    planned
}

/// The tables planning knows of, for its suggestions: their names, and all their columns.
struct Known {
    tables: Vec<String>,
    columns: Vec<String>,
}

/// A session without data: an empty table for each dataset and seed.
fn planning_session(project: &Project) -> (SessionContext, Known) {
    // Spans let DataFusion place type errors (`a + b` of incompatible types) in the SQL.
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new()
            .set_bool("datafusion.sql_parser.collect_spans", true),
    );
    super::udf::register(&ctx, project.settings.timezone);
    let mut columns: Vec<String> = Vec::new();
    for (name, schema) in &project.schemas {
        empty(
            &ctx,
            &mut columns,
            name,
            Arc::new(warehouse::delta_schema(&schema.arrow_schema())),
        );
    }
    let mut tables: Vec<String> = project.schemas.keys().cloned().collect();
    for f in super::seed_files(&project.root.join("sql/seeds")) {
        if let Ok((name, schema)) = super::seed_schema(&f) {
            empty(&ctx, &mut columns, &name, Arc::new(schema));
            tables.push(name);
        }
    }
    (ctx, Known { tables, columns })
}

/// Plans one SQL file: its result (and its `published_` history) becomes an empty table for
/// the files after it, and its columns are returned; an error is reported in `diags`.
async fn plan_file(
    ctx: &SessionContext,
    src: &Source,
    known: &mut Known,
    diags: &mut Diagnostics,
) -> Option<Vec<String>> {
    let name = crate::config::pipeline::table_name(&src.path);
    unknown_parameters(src, diags);
    match super::plan_query(ctx, &src.text).await {
        Ok(plan) => {
            let schema: arrow::datatypes::SchemaRef = Arc::new(plan.schema().as_arrow().clone());
            let planned = schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>();
            empty(ctx, &mut known.columns, &name, schema.clone());
            empty(
                ctx,
                &mut known.columns,
                &super::published_name(&name),
                warehouse::published::schema(&schema),
            );
            known.tables.push(name.clone());
            Some(planned)
        }
        Err(e) => {
            // DataFusion places some errors itself (type errors); the name an error
            // quotes is looked for first, as it also gives a suggestion.
            let placed = e
                .diagnostic()
                .and_then(|d| d.span)
                .and_then(|sp| span_of(&src.text, sp));
            report(
                src,
                &e.to_string(),
                placed,
                &known.tables,
                &known.columns,
                diags,
            );
            None
        }
    }
}

/// Plans a report's checks, after its tables; an error points at the check in the pipeline
/// file.
async fn plan_checks(
    ctx: &SessionContext,
    project: &Project,
    p: &crate::config::pipeline::Pipeline,
    job: &crate::config::pipeline::ReportJob,
    diags: &mut Diagnostics,
) {
    let pipeline_src = Source::new(
        p.file.clone(),
        std::fs::read_to_string(project.root.join(&p.file))
            .or_else(|_| std::fs::read_to_string(&p.file))
            .unwrap_or_default(),
    );
    for c in &job.checks {
        if let Err(e) = super::plan_query(ctx, &c.sql).await {
            // The check's SQL is a TOML string: point at it in the pipeline file.
            let span = if pipeline_src.text.len() >= c.span.end {
                c.span.clone()
            } else {
                0..0
            };
            diags.error_at(
                &pipeline_src,
                span,
                format!("check `{}`: {}", c.name, super::first_line(&e.to_string())),
                Some("fix the check's SQL; it runs after the report's tables".into()),
            );
        }
    }
}

/// `$name` that parstat does not bind.
fn unknown_parameters(src: &Source, diags: &mut Diagnostics) {
    let known = parameters();
    let bytes = src.text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            let name = &src.text[start..end];
            if !name.is_empty()
                && !name.chars().all(|c| c.is_ascii_digit())
                && !known.iter().any(|k| k == name)
            {
                let help = match closest(name, known.iter().map(String::as_str)) {
                    Some(c) => format!("did you mean `${c}`?"),
                    None => format!("parstat binds ${}", known.join(", $")),
                };
                diags.error_at(
                    src,
                    i..end,
                    format!("unknown parameter `${name}`"),
                    Some(help),
                );
            }
            i = end;
        } else {
            i += 1;
        }
    }
}

/// Places a planning error in the file: at the position DataFusion gives, or at the first
/// occurrence of the name it complains about, with the closest valid name.
fn report(
    src: &Source,
    message: &str,
    placed: Option<std::ops::Range<usize>>,
    tables: &[String],
    columns: &[String],
    diags: &mut Diagnostics,
) {
    let msg = super::first_line(message)
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("SQL error: ")
        .to_string();
    // "No field named nope." / "table 'x' not found" / "Invalid function 'f'".
    let quoted = |s: &str| -> Option<String> {
        for (open, close) in [("named ", "."), ("'", "'"), ("\"", "\""), ("`", "`")] {
            if let Some(a) = s.find(open) {
                let rest = &s[a + open.len()..];
                if let Some(b) = rest.find(close) {
                    let w = rest[..b].trim_matches(['"', '\'']).to_string();
                    if !w.is_empty() {
                        return Some(w);
                    }
                }
            }
        }
        None
    };
    let name = quoted(&msg);
    let bare = name
        .as_deref()
        .map(|n| n.rsplit('.').next().unwrap_or(n).to_string());
    let at = if let Some(pos) = line_col_in(&msg) {
        offset_of(&src.text, pos)
    } else {
        bare.as_deref().and_then(|n| find_word(&src.text, n))
    };
    let help = bare.as_deref().and_then(|n| {
        let lower = msg.to_lowercase();
        let candidates = if lower.contains("table") {
            tables
        } else {
            columns
        };
        closest(n, candidates.iter().map(String::as_str)).map(|c| format!("did you mean `{c}`?"))
    });
    let span = at
        .map(|a| a..a + bare.as_deref().map(str::len).unwrap_or(1))
        .or(placed)
        .unwrap_or(0..0);
    diags.error_at(src, span, msg, help);
}

/// The byte range of a span DataFusion attached to an error (1-based lines and columns).
fn span_of(text: &str, sp: datafusion::common::Span) -> Option<std::ops::Range<usize>> {
    if sp.start.line == 0 {
        return None;
    }
    let start = offset_of(text, (sp.start.line as usize, sp.start.column as usize))?;
    let end = offset_of(text, (sp.end.line as usize, sp.end.column as usize)).unwrap_or(start);
    Some(start..end.max(start + 1))
}

/// "… at Line: 3, Column: 5".
fn line_col_in(msg: &str) -> Option<(usize, usize)> {
    let a = msg.find("Line: ")?;
    let rest = &msg[a + 6..];
    let line: usize = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let b = rest.find("Column: ")?;
    let col: usize = rest[b + 8..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((line, col))
}

fn offset_of(text: &str, (line, col): (usize, usize)) -> Option<usize> {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let l = text[start..].lines().next()?;
    let byte = l
        .char_indices()
        .nth(col.saturating_sub(1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    Some(start + byte)
}

/// The first occurrence of `word` as a whole identifier outside comments.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let code = line.split("--").next().unwrap_or(line);
        let mut from = 0;
        while let Some(i) = code[from..].find(word) {
            let a = from + i;
            let b = a + word.len();
            let before = code[..a].chars().next_back();
            let after = code[b..].chars().next();
            if !before.is_some_and(ident) && !after.is_some_and(ident) {
                return Some(offset + a);
            }
            from = b;
        }
        offset += line.len();
    }
    None
}
