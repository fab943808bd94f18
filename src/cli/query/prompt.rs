//! The interactive prompt of `parstat query` (history, completion of tables, columns,
//! parameters and keywords, multi-line statements ended by `;`), and its non-interactive
//! twin that runs the statements piped to standard input.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{CompletionType, Config, Context, Editor, Helper, Highlighter, Hinter};

use super::{write_result, Format};
use crate::cli::Failure;
use crate::config::pipeline::PeriodRule;
use crate::query::{self, Period};

/// What the prompt carries from one statement to the next.
pub struct State {
    pub params: Vec<(String, ScalarValue)>,
    pub format: Format,
    pub rule: PeriodRule,
    pub tz: chrono_tz::Tz,
}

const COMMANDS: &[(&str, &str)] = &[
    (".tables", "list the tables"),
    (".schema", ".schema TABLE: its columns and types"),
    (
        ".period",
        ".period YYYY-MM [calendar|decree09]: bind $period and the others",
    ),
    (".format", ".format table|csv|json"),
    (".help", "this list"),
    (".quit", "leave (or Ctrl-D)"),
];

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "HAVING",
    "LIMIT",
    "JOIN",
    "LEFT JOIN",
    "INNER JOIN",
    "ON",
    "AS",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS",
    "IN",
    "BETWEEN",
    "LIKE",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "DISTINCT",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "WITH",
    "UNION ALL",
    "DESC",
    "ASC",
    "CAST",
    "COALESCE",
    "FILTER",
    "OVER",
    "PARTITION BY",
    "date_trunc",
    "local_date",
    "local_month",
    "EXPLAIN",
];

/// Names the prompt completes: tables, their columns, and the period parameters.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    pub columns: BTreeMap<String, Vec<String>>,
    pub params: Vec<String>,
}

impl Catalog {
    async fn read(ctx: &SessionContext) -> Catalog {
        let mut columns: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let sql = "SELECT table_name, column_name FROM information_schema.columns \
                   WHERE table_schema = 'public' ORDER BY table_name, ordinal_position";
        if let Ok(df) = parstat_plan::sql(ctx, sql).await {
            if let Ok(batches) = parstat_plan::collect(df).await {
                for b in &batches {
                    let t = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8);
                    let c = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8);
                    let (Ok(t), Ok(c)) = (t, c) else { continue };
                    let (t, c) = (
                        arrow::array::AsArray::as_string::<i32>(&t),
                        arrow::array::AsArray::as_string::<i32>(&c),
                    );
                    for i in 0..b.num_rows() {
                        columns
                            .entry(t.value(i).to_string())
                            .or_default()
                            .push(c.value(i).to_string());
                    }
                }
            }
        }
        // Only the parameters' names are completed: any period gives them.
        let params = query::params(
            &Period::new(2000, 1, PeriodRule::Calendar),
            chrono_tz::Asia::Ho_Chi_Minh,
        )
        .into_iter()
        .map(|(k, _)| format!("${k}"))
        .collect();
        Catalog { columns, params }
    }
}

/// Candidates for the word before `pos` in `line`, with where the word starts.
pub fn complete(line: &str, pos: usize, cat: &Catalog) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '.' || *c == '$'))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0);
    let word = &before[start..];
    let starts = |cand: &str| cand.to_lowercase().starts_with(&word.to_lowercase());
    if start == 0 && word.starts_with('.') {
        return (
            0,
            COMMANDS
                .iter()
                .map(|(c, _)| c.to_string())
                .filter(|c| c.starts_with(word))
                .collect(),
        );
    }
    if word.starts_with('$') {
        return (
            start,
            cat.params.iter().filter(|p| starts(p)).cloned().collect(),
        );
    }
    if let Some((table, col)) = word.split_once('.') {
        let cols = cat.columns.get(table).cloned().unwrap_or_default();
        let lc = col.to_lowercase();
        return (
            start + table.len() + 1,
            cols.into_iter()
                .filter(|c| c.to_lowercase().starts_with(&lc))
                .collect(),
        );
    }
    // After FROM or JOIN only a table makes sense.
    let previous = before[..start]
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_uppercase();
    let mut out: Vec<String> = cat.columns.keys().filter(|t| starts(t)).cloned().collect();
    if !matches!(previous.as_str(), "FROM" | "JOIN" | "TABLE" | ".SCHEMA") {
        let mut cols: Vec<String> = cat
            .columns
            .values()
            .flatten()
            .filter(|c| starts(c))
            .cloned()
            .collect();
        cols.sort();
        cols.dedup();
        out.extend(cols);
        let lower = word.chars().all(|c| !c.is_uppercase()) && !word.is_empty();
        out.extend(KEYWORDS.iter().filter(|k| starts(k)).map(|k| {
            if lower {
                k.to_lowercase()
            } else {
                k.to_string()
            }
        }));
    }
    (start, out)
}

#[derive(Helper, Hinter, Highlighter)]
struct SqlHelper {
    catalog: Catalog,
}

impl Completer for SqlHelper {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, words) = complete(line, pos, &self.catalog);
        Ok((
            start,
            words
                .into_iter()
                .map(|w| Pair {
                    display: w.clone(),
                    replacement: w,
                })
                .collect(),
        ))
    }
}

impl Validator for SqlHelper {
    /// A statement is complete at its `;`; a dot command at the end of its line.
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        let input = ctx.input().trim();
        if input.is_empty() || input.starts_with('.') || input.ends_with(';') {
            Ok(ValidationResult::Valid(None))
        } else {
            Ok(ValidationResult::Incomplete)
        }
    }
}

/// Where the prompt keeps its history: `$PARSTAT_HISTORY`, else under `$XDG_STATE_HOME` or
/// `~/.local/state`.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PARSTAT_HISTORY") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("parstat").join("query_history"))
}

/// Splits text into statements (a `;` inside a string does not split).
fn statements(text: &str) -> Result<Vec<String>, String> {
    let parsed = Parser::parse_sql(&GenericDialect {}, text).map_err(|e| e.to_string())?;
    if parsed.len() == 1 {
        // One statement runs as written, so that DataFusion sees exactly what was typed.
        return Ok(vec![text.trim().trim_end_matches(';').to_string()]);
    }
    Ok(parsed.iter().map(|s| s.to_string()).collect())
}

/// Runs one statement and prints its result; errors are returned as text.
async fn execute(ctx: &SessionContext, state: &State, sql: &str) -> Result<(), String> {
    let started = Instant::now();
    let (schema, batches) = query::run_sql(ctx, "query", sql, &state.params)
        .await
        .map_err(|e| {
            let hint = if state.params.is_empty() && sql.contains('$') {
                "\nhelp: bind the period parameters with `.period YYYY-MM`"
            } else {
                ""
            };
            format!("{e}{hint}")
        })?;
    let mut out = std::io::stdout().lock();
    write_result(&mut out, state.format, &schema, &batches).map_err(|e| e.to_string())?;
    let _ = out.flush();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    eprintln!("{rows} row(s) in {:.3} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A dot command; `Ok(false)` means leave.
async fn command(ctx: &SessionContext, state: &mut State, line: &str) -> Result<bool, String> {
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or_default();
    let args: Vec<&str> = parts.collect();
    match cmd {
        ".quit" | ".exit" | ".q" => return Ok(false),
        ".help" => {
            for (c, h) in COMMANDS {
                println!("{c:<9} {h}");
            }
            println!(
                "Statements end with `;`. Tab completes tables, columns, $parameters and keywords."
            );
        }
        ".tables" => {
            let cat = Catalog::read(ctx).await;
            for (t, cols) in &cat.columns {
                println!("{t} ({} columns)", cols.len());
            }
        }
        ".schema" => {
            let Some(t) = args.first() else {
                return Err("usage: .schema TABLE".into());
            };
            let sql = format!(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = '{}' ORDER BY ordinal_position",
                t.replace('\'', "''")
            );
            let df = parstat_plan::sql(ctx, &sql)
                .await
                .map_err(|e| e.to_string())?;
            let batches = parstat_plan::collect(df).await.map_err(|e| e.to_string())?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                let cat = Catalog::read(ctx).await;
                let names: Vec<&str> = cat.columns.keys().map(|k| k.as_str()).collect();
                return Err(format!(
                    "no table `{t}`; {}",
                    crate::config::diag::suggest(t, &names)
                ));
            }
            let text =
                arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| e.to_string())?;
            println!("{text}");
        }
        ".period" => {
            let rule = match args.get(1).copied() {
                None => state.rule,
                Some("calendar") => PeriodRule::Calendar,
                Some("decree09") => PeriodRule::Decree09,
                Some(other) => {
                    return Err(format!(
                        "unknown period rule `{other}`: calendar or decree09"
                    ))
                }
            };
            let Some(p) = args.first() else {
                return Err("usage: .period YYYY-MM [calendar|decree09]".into());
            };
            let period = Period::parse(p, rule).map_err(|e| e.to_string())?;
            state.params = query::params(&period, state.tz);
            state.rule = rule;
            println!("$period = {} ({})", period.label(), period.covered_text());
        }
        ".format" => {
            state.format = match args.first().copied() {
                Some("table") => Format::Table,
                Some("csv") => Format::Csv,
                Some("json") => Format::Json,
                _ => return Err("usage: .format table|csv|json".into()),
            };
        }
        other => {
            let names: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).collect();
            return Err(format!(
                "unknown command `{other}`; {}",
                crate::config::diag::suggest(other, &names)
            ));
        }
    }
    Ok(true)
}

/// The interactive prompt.
pub async fn interactive(ctx: &SessionContext, mut state: State) -> Result<(), Failure> {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .max_history_size(5000)
        .map_err(|e| Failure::failed(anyhow::anyhow!("{e}")))?
        .build();
    let mut rl: Editor<SqlHelper, DefaultHistory> =
        Editor::with_config(config).map_err(|e| Failure::failed(anyhow::anyhow!("{e}")))?;
    rl.set_helper(Some(SqlHelper {
        catalog: Catalog::read(ctx).await,
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    eprintln!("parstat query: statements end with `;`, `.help` for commands, Ctrl-D to leave");
    loop {
        let prompt = if state.params.is_empty() {
            "parstat> ".to_string()
        } else {
            let p = state
                .params
                .iter()
                .find(|(k, _)| k == "period")
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            format!("parstat {p}> ")
        };
        let line = tokio::task::block_in_place(|| rl.readline(&prompt));
        let line = match line {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Failure::failed(anyhow::anyhow!("reading the prompt: {e}"))),
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if matches!(text, ".quit" | ".exit" | ".q") {
            break;
        }
        let _ = rl.add_history_entry(text);
        if let Some(h) = &history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = rl.save_history(h);
        }
        if text.starts_with('.') {
            match command(ctx, &mut state, text).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => eprintln!("error: {e}"),
            }
            continue;
        }
        match statements(text) {
            Ok(list) => {
                for s in list {
                    if let Err(e) = execute(ctx, &state, &s).await {
                        eprintln!("error: {e}");
                        break;
                    }
                }
            }
            Err(e) => eprintln!("error: {e}"),
        }
        // New tables (CREATE VIEW …) become completions too.
        let catalog = Catalog::read(ctx).await;
        if let Some(h) = rl.helper_mut() {
            h.catalog = catalog;
        }
    }
    Ok(())
}

/// Statements and dot commands piped to standard input, run in order; the first error stops.
pub async fn script(ctx: &SessionContext, mut state: State) -> Result<(), Failure> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Failure::failed(anyhow::anyhow!("reading standard input: {e}")))?;
    let mut sql = String::new();
    for line in text.lines() {
        if sql.trim().is_empty() && line.trim_start().starts_with('.') {
            match command(ctx, &mut state, line.trim()).await {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => return Err(Failure::usage(anyhow::anyhow!("{e}"))),
            }
        }
        sql.push_str(line);
        sql.push('\n');
        if line.trim_end().ends_with(';') {
            run_text(ctx, &state, &sql).await?;
            sql.clear();
        }
    }
    if !sql.trim().is_empty() {
        run_text(ctx, &state, &sql).await?;
    }
    Ok(())
}

async fn run_text(ctx: &SessionContext, state: &State, sql: &str) -> Result<(), Failure> {
    let list = statements(sql).map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
    for s in list {
        execute(ctx, state, &s)
            .await
            .map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
    }
    Ok(())
}

impl std::fmt::Debug for SqlHelper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlHelper").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let mut columns = BTreeMap::new();
        columns.insert(
            "dossier".to_string(),
            vec!["dossier_code".to_string(), "received_at".to_string()],
        );
        columns.insert(
            "published_dossier_monthly".to_string(),
            vec!["period".to_string()],
        );
        Catalog {
            columns,
            params: vec!["$period".into(), "$period_start".into()],
        }
    }

    #[test]
    fn completes_tables_after_from_and_columns_after_a_dot() {
        let c = catalog();
        assert_eq!(
            complete("SELECT * FROM dos", 17, &c),
            (14, vec!["dossier".to_string()])
        );
        let (start, words) = complete("SELECT dossier.rec", 18, &c);
        assert_eq!((start, words), (15, vec!["received_at".to_string()]));
        let (_, words) = complete(
            "SELECT * FROM dossier WHERE received_at >= $period_s",
            51,
            &c,
        );
        assert_eq!(words, vec!["$period_start".to_string()]);
        let (_, words) = complete("sel", 3, &c);
        assert_eq!(words, vec!["select".to_string()]);
        let (_, words) = complete(".sch", 4, &c);
        assert_eq!(words, vec![".schema".to_string()]);
        let (_, words) = complete("SELECT dossier_c", 16, &c);
        assert_eq!(words, vec!["dossier_code".to_string()]);
    }

    #[test]
    fn splits_statements_outside_strings() {
        let s = statements("SELECT 'a;b' AS x; SELECT 2;").unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].contains("'a;b'"));
    }
}
