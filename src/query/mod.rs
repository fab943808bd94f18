//! The query stage: a report's SQL files run by DataFusion over the warehouse for one period,
//! with the period parameters bound as typed values, each previous-period value joined in,
//! and the publish checks run before anything leaves this stage.

pub mod period;
pub mod plan;
pub mod scan;
pub mod udf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, SessionConfig, SessionContext};
use sha2::{Digest, Sha256};

use crate::config::pipeline::{Pipeline, ReportJob};
use crate::config::Project;
use crate::warehouse::{self, Warehouse, WarehouseError};
pub use period::Period;

pub use crate::warehouse::published::published_name;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{file}: error: {message}")]
    Sql { file: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("{}", checks_failed_text(report, period, failed))]
    ChecksFailed {
        report: String,
        period: String,
        failed: Vec<CheckOutcome>,
    },
}

fn checks_failed_text(report: &str, period: &str, failed: &[CheckOutcome]) -> String {
    let mut s = format!(
        "report `{report}` for {period} was not published: {} check(s) failed",
        failed.len()
    );
    for c in failed {
        s.push_str(&format!(
            "\n\ncheck `{}` failed on {} row(s): {}\n{}",
            c.name, c.offending, c.message, c.sample
        ));
    }
    s.push_str("\n\nhelp: fix the source data or the SQL, then rerun the report");
    s
}

/// One result table of a report.
#[derive(Debug, Clone)]
pub struct ResultTable {
    pub name: String,
    pub sql_file: PathBuf,
    /// SHA-256 of the SQL file's text, for the provenance footer.
    pub sql_sha256: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl ResultTable {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
    /// No row at all: the report says "no data" rather than printing zeros.
    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }
}

/// The outcome of one publish check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckOutcome {
    pub name: String,
    pub message: String,
    pub passed: bool,
    pub offending: usize,
    /// The first offending rows, as a text table.
    pub sample: String,
}

/// A warehouse table a report read, and the version it read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputTable {
    pub name: String,
    pub version: Option<u64>,
    /// The table as the report read it, so that what the email says of it (its watermark)
    /// comes from the same version without reading its log again.
    #[serde(skip)]
    pub table: Option<deltalake::DeltaTable>,
}

/// Everything a report computed for one period.
#[derive(Debug, Clone)]
pub struct Computed {
    pub report: String,
    pub period: Period,
    pub tables: Vec<ResultTable>,
    pub checks: Vec<CheckOutcome>,
    pub inputs: Vec<InputTable>,
}

impl Computed {
    pub fn table(&self, name: &str) -> Option<&ResultTable> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// The typed parameters bound to every SQL file for `period`.
pub fn params(period: &Period, tz: chrono_tz::Tz) -> Vec<(String, ScalarValue)> {
    let (t0, t1) = period.bounds(tz);
    let ts = |t: chrono::DateTime<chrono::Utc>| {
        ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
    };
    let date = |d: chrono::NaiveDate| {
        ScalarValue::Date32(Some(
            (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32,
        ))
    };
    let text = |s: String| ScalarValue::Utf8(Some(s));
    let year_start = chrono::NaiveDate::from_ymd_opt(period.year, 1, 1).expect("1 January");
    let first = period.first_day();
    vec![
        ("period".into(), text(period.label())),
        ("period_rule".into(), text(period.rule_name().into())),
        ("period_start".into(), ts(t0)),
        ("period_end".into(), ts(t1)),
        ("period_start_date".into(), date(first)),
        ("period_end_date".into(), date(period.end_day())),
        (
            "period_start_month".into(),
            text(format!("{}", first.format("%Y-%m"))),
        ),
        (
            "period_year".into(),
            ScalarValue::Int64(Some(period.year as i64)),
        ),
        (
            "year_start".into(),
            ts(period::local_midnight(year_start, tz)),
        ),
        ("year_start_date".into(), date(year_start)),
        ("prev_period".into(), text(period.previous().label())),
        ("trend_from".into(), text(period.offset(-11).label())),
    ]
}

/// A session over the warehouse: every dataset of `schemas/` (an empty table when nothing was
/// extracted yet), every published report table, the seeds in `sql/seeds/*.csv` and the
/// local-time functions.
pub async fn session(
    project: &Project,
    wh: &Warehouse,
) -> Result<(SessionContext, Vec<InputTable>), QueryError> {
    session_with(project, Inputs::Warehouse(wh), None).await
}

/// The words of `texts` that could name a table: a report's session opens only the warehouse
/// tables its SQL and checks name (each opening reads a Delta log), and a SQL file waits for
/// the files whose tables it names. Comments and string literals name nothing: a file that
/// only mentions another in a comment runs beside it, not after it.
pub fn named_tables<'a>(
    texts: impl IntoIterator<Item = &'a str>,
) -> std::collections::BTreeSet<String> {
    use datafusion::sql::sqlparser::{dialect::GenericDialect, tokenizer};
    let mut out = std::collections::BTreeSet::new();
    for t in texts {
        match tokenizer::Tokenizer::new(&GenericDialect {}, t).tokenize() {
            Ok(tokens) => out.extend(tokens.into_iter().filter_map(|tok| match tok {
                tokenizer::Token::Word(w) => Some(w.value.to_ascii_lowercase()),
                _ => None,
            })),
            // SQL the tokenizer rejects fails later with its own error; until then every
            // word counts, so that no table it may need is left unopened.
            Err(_) => out.extend(
                t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| !w.is_empty())
                    .map(|w| w.to_ascii_lowercase()),
            ),
        }
    }
    out
}

/// A report's SQL files, read once per computation: (file, result table, SQL text) in the
/// pipeline's order, and the tables they, the checks and the comparison name.
struct SqlFiles {
    files: Vec<(PathBuf, String, String)>,
    names: std::collections::BTreeSet<String>,
}

fn read_files(project: &Project, report: &ReportJob) -> Result<SqlFiles, QueryError> {
    let mut files = Vec::new();
    for file in &report.sql {
        let path = project.root.join(file);
        let sql = std::fs::read_to_string(&path).map_err(|source| QueryError::Io {
            path: path.clone(),
            source,
        })?;
        files.push((file.clone(), crate::config::pipeline::table_name(file), sql));
    }
    let mut names = named_tables(
        files
            .iter()
            .map(|(_, _, sql)| sql.as_str())
            .chain(report.checks.iter().map(|c| c.sql.as_str())),
    );
    // The comparison reads what was published for the previous period.
    names.extend(report.compare.keys().map(|t| published_name(t)));
    Ok(SqlFiles { files, names })
}

/// Tables held in memory, by name, each with its schema.
pub type MemoryTables = BTreeMap<String, (SchemaRef, Vec<RecordBatch>)>;

/// Where a report's input tables come from.
#[derive(Clone, Copy)]
pub enum Inputs<'a> {
    /// The warehouse: datasets and published report tables.
    Warehouse(&'a Warehouse),
    /// Tables given in memory, as report unit tests give them: a dataset not given reads as
    /// empty; a seed given replaces the project's.
    Memory(&'a MemoryTables),
}

/// A session over `inputs`, as [`session`] builds it over the warehouse.
pub async fn session_with(
    project: &Project,
    inputs: Inputs<'_>,
    only: Option<&std::collections::BTreeSet<String>>,
) -> Result<(SessionContext, Vec<InputTable>), QueryError> {
    let wanted = |name: &str| only.is_none_or(|o| o.contains(name));
    // Operators may tune DataFusion with its own DATAFUSION_* variables (for example
    // DATAFUSION_EXECUTION_TARGET_PARTITIONS); parstat's defaults apply where they are unset.
    let mut config = SessionConfig::from_env()
        .unwrap_or_default()
        .with_information_schema(true);
    for (key, env) in [
        // Parquet statistics and partition values prune by period; pushing the period
        // predicates into the scan lets the reader skip rows of the old, finished dossiers.
        (
            "datafusion.execution.parquet.pushdown_filters",
            "DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS",
        ),
        (
            "datafusion.execution.parquet.reorder_filters",
            "DATAFUSION_EXECUTION_PARQUET_REORDER_FILTERS",
        ),
    ] {
        if std::env::var_os(env).is_none() {
            config = config.set_bool(key, true);
        }
    }
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(scan::ParallelFileScans))
        .build();
    let ctx = SessionContext::new_with_state(state);
    // A local warehouse's files are read through a store that does small reads in place: a
    // report opens hundreds of small files (see `local_reads`).
    ctx.register_object_store(
        &url::Url::parse("file://").expect("a constant URL"),
        Arc::new(warehouse::local_reads::InlineLocalReads::new()),
    );
    udf::register(&ctx, project.settings.timezone);
    let wh = match inputs {
        Inputs::Warehouse(wh) => wh,
        Inputs::Memory(tables) => {
            register_seeds(&ctx, &project.root.join("sql").join("seeds")).await?;
            for (name, schema) in &project.schemas {
                if !tables.contains_key(name) {
                    let empty = Arc::new(warehouse::delta_schema(&schema.arrow_schema()));
                    register_batches(&ctx, name, empty, vec![])?;
                }
            }
            for (name, (schema, batches)) in tables {
                register_batches(&ctx, name, schema.clone(), batches.clone())?;
            }
            return Ok((ctx, vec![]));
        }
    };
    // Each table's Delta log is read at the same time: a report names several tables, and
    // reading a log is mostly waiting on files or the object store.
    let datasets: Vec<_> = project
        .schemas
        .iter()
        .filter(|(name, _)| wanted(name))
        .collect();
    let published: Vec<String> = project
        .pipelines
        .iter()
        .filter_map(|p| p.as_report())
        .flat_map(|r| r.tables())
        .map(|t| published_name(&t))
        .filter(|p| wanted(p))
        .collect();
    let (opened, published_opened) = futures_util::future::try_join(
        futures_util::future::try_join_all(datasets.iter().map(|(name, _)| wh.read(name))),
        futures_util::future::try_join_all(published.iter().map(|p| wh.read(p))),
    )
    .await?;
    let mut inputs = Vec::new();
    for ((name, schema), table) in datasets.into_iter().zip(opened) {
        match table.and_then(|t| t.version().map(|v| (t, v))) {
            Some((table, v)) => {
                warehouse::register(&ctx, &table, name).await?;
                inputs.push(InputTable {
                    name: name.clone(),
                    version: Some(v),
                    table: Some(table),
                });
            }
            None => {
                let empty = Arc::new(warehouse::delta_schema(&schema.arrow_schema()));
                register_batches(&ctx, name, empty, vec![])?;
                inputs.push(InputTable {
                    name: name.clone(),
                    version: None,
                    table: None,
                });
            }
        }
    }
    for (pname, table) in published.iter().zip(published_opened) {
        if let Some(table) = table {
            warehouse::register(&ctx, &table, pname).await?;
        }
    }
    register_seeds(&ctx, &project.root.join("sql").join("seeds")).await?;
    Ok((ctx, inputs))
}

/// Seeds: small reference tables kept as CSV beside the SQL (area names, for example). Every
/// column is text, so codes like `0436` keep their leading zeros.
async fn register_seeds(ctx: &SessionContext, dir: &Path) -> Result<(), QueryError> {
    for f in seed_files(dir) {
        let io = |source| QueryError::Io {
            path: f.clone(),
            source,
        };
        let (name, schema) = seed_schema(&f).map_err(io)?;
        ctx.register_csv(
            &name,
            f.to_string_lossy().as_ref(),
            CsvReadOptions::new().schema(&schema).has_header(true),
        )
        .await
        .map_err(|e| QueryError::Sql {
            file: f.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// The seed CSV files in `dir` (`sql/seeds`), sorted.
pub fn seed_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    files
}

/// A seed's table name and schema: its header's columns, all text.
pub fn seed_schema(file: &Path) -> Result<(String, ArrowSchema), std::io::Error> {
    let text = std::fs::read_to_string(file)?;
    let header = text.lines().next().unwrap_or_default();
    let fields: Vec<Field> = header
        .split(',')
        .map(|h| Field::new(h.trim(), DataType::Utf8, true))
        .collect();
    Ok((
        crate::config::pipeline::table_name(file),
        ArrowSchema::new(fields),
    ))
}

fn register_batches(
    ctx: &SessionContext,
    name: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(), QueryError> {
    let mem = MemTable::try_new(schema, vec![batches]).map_err(|e| QueryError::Sql {
        file: name.to_string(),
        message: e.to_string(),
    })?;
    let _ = ctx.deregister_table(name);
    ctx.register_table(name, Arc::new(mem))
        .map_err(|e| QueryError::Sql {
            file: name.to_string(),
            message: e.to_string(),
        })?;
    Ok(())
}

/// What report SQL, checks, data and unit tests and `parstat query` may do: query. DDL
/// (`CREATE EXTERNAL TABLE` reads any file the process can), DML (`COPY ... TO` writes one,
/// `INSERT`) and statements (`SET`) are refused, so SQL cannot reach outside the warehouse.
pub fn read_only() -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A refused statement's error, with what to do instead.
fn refused(e: datafusion::error::DataFusionError) -> datafusion::error::DataFusionError {
    let m = e.to_string();
    if m.contains("DDL not supported")
        || m.contains("DML not supported")
        || m.contains("Statement not supported")
    {
        datafusion::error::DataFusionError::Plan(format!(
            "{}: only queries (SELECT, WITH, VALUES) run here; to write a result to a file use `parstat query ... -o FILE`",
            first_line(&m)
        ))
    } else {
        e
    }
}

/// An error's first line (DataFusion's errors go on with their plan and backtrace).
pub(crate) fn first_line(m: &str) -> &str {
    m.lines().next().unwrap_or(m)
}

/// Plans `sql` as [`read_only`] allows, without running it (`parstat check`).
pub async fn plan_query(
    ctx: &SessionContext,
    sql: &str,
) -> Result<datafusion::logical_expr::LogicalPlan, datafusion::error::DataFusionError> {
    let plan = ctx.state().create_logical_plan(sql).await?;
    read_only().verify_plan(&plan).map_err(refused)?;
    Ok(plan)
}

/// Runs `sql` with the period's parameters bound and collects the result with plain types
/// (no view, dictionary or unsigned types, which neither Delta nor the workbook want).
pub async fn run_sql(
    ctx: &SessionContext,
    origin: &str,
    sql: &str,
    params: &[(String, ScalarValue)],
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let err = |e: datafusion::error::DataFusionError| QueryError::Sql {
        file: origin.to_string(),
        message: e.to_string(),
    };
    let df = ctx
        .sql_with_options(sql, read_only())
        .await
        .map_err(|e| err(refused(e)))?;
    let map: std::collections::HashMap<String, ScalarAndMetadata> = params
        .iter()
        .map(|(k, v)| (k.clone(), ScalarAndMetadata::from(v.clone())))
        .collect();
    let df = df.with_param_values(ParamValues::Map(map)).map_err(err)?;
    collect_plain(df).await.map_err(|message| QueryError::Sql {
        file: origin.to_string(),
        message,
    })
}

fn plain_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Dictionary(_, v) => plain_type(v),
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::Int64,
        other => other.clone(),
    }
}

fn plain_schema(s: &ArrowSchema) -> SchemaRef {
    Arc::new(ArrowSchema::new(
        s.fields()
            .iter()
            .map(|f| Field::new(f.name(), plain_type(f.data_type()), true))
            .collect::<Vec<_>>(),
    ))
}

/// Collects `df` with plain types: no view, dictionary or unsigned types, which neither Delta
/// nor the workbook want. The schema is returned too, for an empty result.
async fn collect_plain(
    df: datafusion::dataframe::DataFrame,
) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let plain = plain_schema(df.schema().as_arrow());
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    let batches = batches
        .iter()
        .map(|b| warehouse::cast_batch(b, &plain))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((plain, batches))
}

/// The first `n` rows of a result as a text table, with a note of how many more there are.
pub fn sample(batches: &[RecordBatch], n: usize) -> String {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut first = Vec::new();
    let mut left = n;
    for b in batches {
        if left == 0 {
            break;
        }
        let k = b.num_rows().min(left);
        first.push(b.slice(0, k));
        left -= k;
    }
    let mut text = arrow::util::pretty::pretty_format_batches(&first)
        .map(|t| t.to_string())
        .unwrap_or_default();
    if total > n {
        text.push_str(&format!("\n… and {} more", total - n));
    }
    text
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Computes every table of `report` for `period`: the SQL files in order (each result is a
/// table the later files can read), then the previous-period values, then the checks. A
/// failed check is an error: nothing computed here may be published.
pub async fn compute(
    project: &Project,
    wh: &Warehouse,
    pipeline: &Pipeline,
    period: Period,
) -> Result<Computed, QueryError> {
    compute_with(project, Inputs::Warehouse(wh), pipeline, period).await
}

/// [`compute`] over any inputs: report unit tests compute from tables held in memory.
pub async fn compute_with(
    project: &Project,
    source: Inputs<'_>,
    pipeline: &Pipeline,
    period: Period,
) -> Result<Computed, QueryError> {
    let report = pipeline
        .as_report()
        .expect("compute is called for report pipelines");
    let sql = read_files(project, report)?;
    let started = std::time::Instant::now();
    let phase = |what: &str| tracing::debug!(seconds = started.elapsed().as_secs_f64(), "{what}");
    let (ctx, inputs) = session_with(project, source, Some(&sql.names)).await?;
    phase("session ready");
    // What was published before this run, known before the SQL files register an empty
    // history for the tables that have none.
    let published: std::collections::BTreeSet<String> = report
        .compare
        .keys()
        .filter(|t| ctx.table_exist(published_name(t).as_str()).unwrap_or(false))
        .cloned()
        .collect();
    // The previous period's values are read while the SQL files run: neither needs the other.
    let (mut tables, previous) = futures_util::future::try_join(
        run_files(project, &ctx, &sql, &period),
        previous_values(project, source, &ctx, report, &sql, &period, &published),
    )
    .await?;
    phase("sql files and previous values computed");
    if !report.compare.is_empty() {
        for t in tables.iter_mut() {
            let Some(keys) = report.compare.get(&t.name) else {
                continue;
            };
            let prev = previous.get(&t.name).cloned().unwrap_or_default();
            let batches = join_previous(t, keys, prev).await?;
            t.batches = batches;
            t.schema = t
                .batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| t.schema.clone());
            register_batches(&ctx, &t.name, t.schema.clone(), t.batches.clone())?;
        }
    }
    let checks = run_checks(&ctx, &tables, report, &period, project).await?;
    phase("checks run");
    let failed: Vec<CheckOutcome> = checks.iter().filter(|c| !c.passed).cloned().collect();
    if !failed.is_empty() {
        return Err(QueryError::ChecksFailed {
            report: pipeline.name.clone(),
            period: period.to_string(),
            failed,
        });
    }
    Ok(Computed {
        report: pipeline.name.clone(),
        period,
        tables,
        checks,
        inputs,
    })
}

/// Runs the report's SQL files. A file reads the tables of the files before it that it names
/// (or their `published_` history); files that do not depend on one another run at the same
/// time, in waves, so that small queries overlap the big scans. Results keep the file order.
async fn run_files(
    project: &Project,
    ctx: &SessionContext,
    sql: &SqlFiles,
    period: &Period,
) -> Result<Vec<ResultTable>, QueryError> {
    let params = params(period, project.settings.timezone);
    let files = &sql.files;
    let deps: Vec<Vec<usize>> = files
        .iter()
        .enumerate()
        .map(|(i, (_, _, sql))| {
            let words = named_tables([sql.as_str()]);
            (0..i)
                .filter(|&j| {
                    let n = &files[j].1;
                    words.contains(n) || words.contains(&published_name(n))
                })
                .collect()
        })
        .collect();
    let mut done: Vec<Option<ResultTable>> = files.iter().map(|_| None).collect();
    while done.iter().any(|d| d.is_none()) {
        let wave: Vec<usize> = (0..files.len())
            .filter(|&i| done[i].is_none() && deps[i].iter().all(|&j| done[j].is_some()))
            .collect();
        let runs = wave.iter().map(|&i| {
            let (file, name, sql) = &files[i];
            let origin = file.display().to_string();
            let params = &params;
            async move {
                let started = std::time::Instant::now();
                let out = run_sql(ctx, &origin, sql, params).await;
                tracing::debug!(table = %name, seconds = started.elapsed().as_secs_f64(), "computed");
                out
            }
        });
        let outs = futures_util::future::join_all(runs).await;
        for (&i, out) in wave.iter().zip(outs) {
            let (file, name, sql) = &files[i];
            let (schema, batches) = out?;
            register_batches(ctx, name, schema.clone(), batches.clone())?;
            // A report table whose history is not published yet reads as empty, so that trend
            // queries over `published_<table>` work from the first run on.
            let pname = published_name(name);
            if !ctx.table_exist(pname.as_str()).unwrap_or(false) {
                register_batches(ctx, &pname, warehouse::published::schema(&schema), vec![])?;
            }
            done[i] = Some(ResultTable {
                name: name.clone(),
                sql_file: file.clone(),
                sql_sha256: sha256_hex(sql),
                schema,
                batches,
            });
        }
    }
    Ok(done.into_iter().flatten().collect())
}

/// The previous period's values of each compared table: what was published for it (the
/// tables of `published` have a history), or, when nothing was, the same SQL computed for that
/// period (not published).
async fn previous_values(
    project: &Project,
    source: Inputs<'_>,
    ctx: &SessionContext,
    report: &ReportJob,
    sql: &SqlFiles,
    period: &Period,
    published: &std::collections::BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<RecordBatch>>, QueryError> {
    let prev = period.previous();
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for table in report.compare.keys() {
        let pname = published_name(table);
        if published.contains(table) {
            let (_, batches) = run_sql(
                ctx,
                &pname,
                &format!(
                    "SELECT * FROM {pname} WHERE period = $prev_period AND period_rule = $period_rule"
                ),
                &params(period, project.settings.timezone),
            )
            .await?;
            if batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0 {
                out.insert(table.clone(), batches);
                continue;
            }
        }
        missing.push(table.clone());
    }
    if !missing.is_empty() {
        tracing::debug!(period = %prev, tables = ?missing, "previous period not published; computing it for the comparison");
        let (pctx, _) = session_with(project, source, Some(&sql.names)).await?;
        let tables = run_files(project, &pctx, sql, &prev).await?;
        for t in tables {
            if missing.contains(&t.name) {
                out.insert(t.name, t.batches);
            }
        }
    }
    Ok(out)
}

fn is_measure(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Decimal128(_, _))
}

/// Adds `<measure>_prev` after the current columns: every numeric column that is not a key,
/// matched on the keys (NULL keys match NULL keys). Row order is kept.
async fn join_previous(
    t: &ResultTable,
    keys: &[String],
    prev: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = SessionContext::new();
    let origin = format!("{} (previous period)", t.sql_file.display());
    let err = |e: String| QueryError::Sql {
        file: origin.clone(),
        message: e,
    };
    // The current rows, numbered to restore their order after the join.
    let mut numbered = Vec::new();
    let mut offset = 0u64;
    let mut fields: Vec<Field> = t
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("__row", DataType::UInt64, false));
    let nschema = Arc::new(ArrowSchema::new(fields));
    for b in &t.batches {
        let n = b.num_rows() as u64;
        let mut cols = b.columns().to_vec();
        cols.push(Arc::new(UInt64Array::from_iter_values(offset..offset + n)));
        offset += n;
        numbered.push(RecordBatch::try_new(nschema.clone(), cols).map_err(|e| err(e.to_string()))?);
    }
    register_batches(&ctx, "__cur", nschema, numbered)?;
    let prev_schema = prev
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| t.schema.clone());
    register_batches(&ctx, "__prev", prev_schema.clone(), prev)?;
    let q = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let mut select = vec!["c.*".to_string()];
    for f in t.schema.fields() {
        let n = f.name();
        if keys.contains(n) || n.ends_with("_prev") || !is_measure(f.data_type()) {
            continue;
        }
        let prev_col = format!("{n}_prev");
        if t.schema.field_with_name(&prev_col).is_ok() {
            // The SQL computed it itself.
            continue;
        }
        if prev_schema.field_with_name(n).is_ok() {
            select.push(format!("p.{} AS {}", q(n), q(&prev_col)));
        } else {
            select.push(format!(
                "CAST(NULL AS {}) AS {}",
                sql_type(f.data_type()),
                q(&prev_col)
            ));
        }
    }
    for k in keys {
        if prev_schema.field_with_name(k).is_err() || t.schema.field_with_name(k).is_err() {
            return Err(err(format!(
                "compare key `{k}` is not a column of `{}`",
                t.name
            )));
        }
    }
    let on = if keys.is_empty() {
        "TRUE".to_string()
    } else {
        keys.iter()
            .map(|k| format!("(c.{} IS NOT DISTINCT FROM p.{})", q(k), q(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let sql = format!(
        "SELECT {} FROM __cur c LEFT JOIN __prev p ON {on} ORDER BY c.__row",
        select.join(", ")
    );
    let df = ctx.sql(&sql).await.map_err(|e| err(e.to_string()))?;
    let df = df
        .drop_columns(&["__row"])
        .map_err(|e| err(e.to_string()))?;
    let (plain, out) = collect_plain(df).await.map_err(err)?;
    if out.is_empty() {
        return Ok(vec![RecordBatch::new_empty(plain)]);
    }
    Ok(out)
}

fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Float32 | DataType::Float64 => "DOUBLE".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "INT".into(),
        _ => "BIGINT".into(),
    }
}

/// The checks: every `*_rate` column within 0..100, then the report's own checks (SQL that
/// returns the offending rows).
async fn run_checks(
    ctx: &SessionContext,
    tables: &[ResultTable],
    report: &ReportJob,
    period: &Period,
    project: &Project,
) -> Result<Vec<CheckOutcome>, QueryError> {
    let params = params(period, project.settings.timezone);
    // (name, message, SQL) of each check, run at the same time below.
    let mut checks: Vec<(String, String, String)> = Vec::new();
    for t in tables {
        let rates: Vec<String> = t
            .schema
            .fields()
            .iter()
            .filter(|f| {
                f.name().ends_with("_rate")
                    && is_measure(f.data_type())
                    && !report.unbounded_rates.contains(f.name())
            })
            .map(|f| f.name().clone())
            .collect();
        if rates.is_empty() {
            continue;
        }
        let cond = rates
            .iter()
            .map(|r| format!("\"{r}\" < 0 OR \"{r}\" > 100"))
            .collect::<Vec<_>>()
            .join(" OR ");
        checks.push((
            format!("{}_rates_within_0_100", t.name),
            format!(
                "rates of `{}` must lie within 0..100 ({})",
                t.name,
                rates.join(", ")
            ),
            format!("SELECT * FROM {} WHERE {cond}", t.name),
        ));
    }
    for c in &report.checks {
        checks.push((c.name.clone(), c.message.clone(), c.sql.clone()));
    }
    futures_util::future::try_join_all(
        checks
            .iter()
            .map(|(name, message, sql)| check(ctx, name, message, sql, &params)),
    )
    .await
}

async fn check(
    ctx: &SessionContext,
    name: &str,
    message: &str,
    sql: &str,
    params: &[(String, ScalarValue)],
) -> Result<CheckOutcome, QueryError> {
    let (_, batches) = run_sql(ctx, &format!("check `{name}`"), sql, params).await?;
    let offending: usize = batches.iter().map(|b| b.num_rows()).sum();
    let sample = if offending == 0 {
        String::new()
    } else {
        sample(&batches, 10)
    };
    Ok(CheckOutcome {
        name: name.to_string(),
        message: message.to_string(),
        passed: offending == 0,
        offending,
        sample,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_named_in_comments_or_strings_are_not_named() {
        let n = super::named_tables([
            "-- empty when dossier_monthly is\nSELECT x FROM Late_Procedures /* trend_monthly */\nWHERE y = 'par_index' AND z = $period",
        ]);
        assert!(n.contains("late_procedures"), "{n:?}");
        for absent in ["dossier_monthly", "trend_monthly", "par_index", "period"] {
            assert!(!n.contains(absent), "{absent} in {n:?}");
        }
        // SQL the tokenizer rejects (an unterminated string): every word counts.
        let n = super::named_tables(["SELECT * FROM dossier WHERE a = 'rating"]);
        assert!(n.contains("dossier") && n.contains("rating"), "{n:?}");
    }
}
