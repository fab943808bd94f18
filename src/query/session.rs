//! The DataFusion session a report's SQL runs in: its configuration, the warehouse tables (or
//! tables held in memory) registered by name, the seeds and parstat's SQL functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, SessionConfig, SessionContext};

use super::{published_name, scan, udf, QueryError};
use crate::config::Project;
use crate::warehouse::{self, Warehouse};

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

/// A session over the warehouse: every dataset of `schemas/` (an empty table when nothing was
/// extracted yet), every published report table, the seeds in `sql/seeds/*.csv` and the
/// local-time functions.
pub async fn session(
    project: &Project,
    wh: &Warehouse,
) -> Result<(SessionContext, Vec<InputTable>), QueryError> {
    session_with(project, Inputs::Warehouse(wh), None).await
}

/// A session over `inputs`, as [`session`] builds it over the warehouse; with `only`, just the
/// warehouse tables it names are opened.
pub async fn session_with(
    project: &Project,
    inputs: Inputs<'_>,
    only: Option<&BTreeSet<String>>,
) -> Result<(SessionContext, Vec<InputTable>), QueryError> {
    let seeds = project.root.join("sql").join("seeds");
    match inputs {
        Inputs::Memory(tables) => {
            let ctx = new_context(project);
            register_seeds(&ctx, &seeds).await?;
            register_memory(&ctx, project, tables)?;
            Ok((ctx, vec![]))
        }
        Inputs::Warehouse(wh) => {
            let (ctx, remote) = engine_context(project).await?;
            let inputs = register_warehouse(&ctx, project, wh, only, remote).await?;
            register_seeds(&ctx, &seeds).await?;
            if remote {
                // The executors may not have the project folder: the seeds travel in the plan.
                seeds_in_memory(&ctx, &seeds).await?;
            }
            Ok((ctx, inputs))
        }
    }
}

/// The session of the project's `[engine]`, and whether it runs on a cluster.
async fn engine_context(project: &Project) -> Result<(SessionContext, bool), QueryError> {
    match &project.settings.engine {
        crate::config::settings::Engine::Local => Ok((new_context(project), false)),
        #[cfg(feature = "cluster")]
        crate::config::settings::Engine::Ballista {
            scheduler,
            query_timeout_secs,
        } => {
            let config = session_config().with_extension(Arc::new(OnCluster {
                timeout: std::time::Duration::from_secs(*query_timeout_secs),
                scheduler: scheduler.clone(),
            }));
            let ctx = crate::cluster::remote_context(scheduler, config)
                .await
                .map_err(|e| QueryError::Cluster {
                    file: "[engine]".into(),
                    source: e.into(),
                })?;
            udf::register(&ctx, project.settings.timezone);
            Ok((ctx, true))
        }
        #[cfg(not(feature = "cluster"))]
        crate::config::settings::Engine::Ballista { .. } => Err(QueryError::sql(
            "[engine]",
            "this parstat was built without Ballista; build it with `--features cluster`",
        )),
    }
}

/// Marks a session whose queries run on a cluster, with how long one may take.
#[derive(Debug)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
struct OnCluster {
    timeout: std::time::Duration,
    scheduler: String,
}

/// How long a query of `ctx` may run, when it runs on a cluster.
pub(super) fn cluster_timeout(ctx: &SessionContext) -> Option<std::time::Duration> {
    ctx.state()
        .config()
        .get_extension::<OnCluster>()
        .map(|c| c.timeout)
}

/// The scheduler `ctx`'s queries go to, when they run on a cluster.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(super) fn cluster_scheduler(ctx: &SessionContext) -> Option<String> {
    ctx.state()
        .config()
        .get_extension::<OnCluster>()
        .map(|c| c.scheduler.clone())
}

/// Replaces each seed table with its rows in memory.
async fn seeds_in_memory(ctx: &SessionContext, dir: &Path) -> Result<(), QueryError> {
    for f in seed_files(dir) {
        let name = crate::config::pipeline::table_name(&f);
        let df = parstat_plan::table(ctx, &name)
            .await
            .map_err(|e| QueryError::sql(&name, e))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        // Read here, by this process, not by the cluster.
        let local = SessionContext::new();
        local
            .register_table(
                &name,
                ctx.table_provider(&name)
                    .await
                    .map_err(|e| QueryError::sql(&name, e))?,
            )
            .map_err(|e| QueryError::sql(&name, e))?;
        let df = parstat_plan::table(&local, &name)
            .await
            .map_err(|e| QueryError::sql(&name, e))?;
        let rows = parstat_plan::collect(df)
            .await
            .map_err(|e| QueryError::sql(&name, e))?;
        register_batches(ctx, &name, schema, rows)?;
    }
    Ok(())
}

/// An empty session with parstat's configuration, scan rule, local file reads and functions.
fn new_context(project: &Project) -> SessionContext {
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(session_config())
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
    ctx
}

/// DataFusion's configuration: operators may tune DataFusion with its own DATAFUSION_*
/// variables (for example DATAFUSION_EXECUTION_TARGET_PARTITIONS); parstat's defaults apply
/// where they are unset.
fn session_config() -> SessionConfig {
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
    config
}

/// Registers the tables given in memory, and an empty table for each dataset not given.
fn register_memory(
    ctx: &SessionContext,
    project: &Project,
    tables: &MemoryTables,
) -> Result<(), QueryError> {
    for (name, schema) in &project.schemas {
        if !tables.contains_key(name) {
            let empty = Arc::new(warehouse::delta_schema(&schema.arrow_schema()));
            register_batches(ctx, name, empty, vec![])?;
        }
    }
    for (name, (schema, batches)) in tables {
        register_batches(ctx, name, schema.clone(), batches.clone())?;
    }
    Ok(())
}

/// Registers the warehouse's datasets (an empty table for one not extracted yet) and published
/// report tables, those of `only` when given; returns the datasets read, with their versions.
async fn register_warehouse(
    ctx: &SessionContext,
    project: &Project,
    wh: &Warehouse,
    only: Option<&BTreeSet<String>>,
    remote: bool,
) -> Result<Vec<InputTable>, QueryError> {
    let wanted = |name: &str| only.is_none_or(|o| o.contains(name));
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
    // Each table's Delta log is read at the same time: a report names several tables, and
    // reading a log is mostly waiting on files or the object store.
    let (opened, published_opened) = futures_util::future::try_join(
        futures_util::future::try_join_all(datasets.iter().map(|(name, _)| wh.read(name))),
        futures_util::future::try_join_all(published.iter().map(|p| wh.read(p))),
    )
    .await?;
    let mut inputs = Vec::new();
    for ((name, schema), table) in datasets.into_iter().zip(opened) {
        inputs.push(register_dataset(ctx, name, schema, table, remote).await?);
    }
    for (pname, table) in published.iter().zip(published_opened) {
        if let Some(table) = table {
            register_table(ctx, &table, pname, remote).await?;
        }
    }
    Ok(inputs)
}

/// Registers dataset `name` as read from the warehouse, or as an empty table of its schema
/// when it has no version yet.
async fn register_dataset(
    ctx: &SessionContext,
    name: &str,
    schema: &crate::config::Schema,
    table: Option<deltalake::DeltaTable>,
    remote: bool,
) -> Result<InputTable, QueryError> {
    match table.and_then(|t| t.version().map(|v| (t, v))) {
        Some((table, v)) => {
            register_table(ctx, &table, name, remote).await?;
            Ok(InputTable {
                name: name.to_string(),
                version: Some(v),
                table: Some(table),
            })
        }
        None => {
            let empty = Arc::new(warehouse::delta_schema(&schema.arrow_schema()));
            register_batches(ctx, name, empty, vec![])?;
            Ok(InputTable {
                name: name.to_string(),
                version: None,
                table: None,
            })
        }
    }
}

/// Registers a warehouse table: on a cluster, as the Parquet files of its loaded version.
async fn register_table(
    ctx: &SessionContext,
    table: &deltalake::DeltaTable,
    name: &str,
    remote: bool,
) -> Result<(), QueryError> {
    if !remote {
        return Ok(warehouse::register(ctx, table, name).await?);
    }
    #[cfg(feature = "cluster")]
    {
        let err = |e: datafusion::error::DataFusionError| QueryError::sql(name, e);
        // The schema the local engine reads, so that both engines give the same columns.
        let schema = table
            .table_provider()
            .await
            .map_err(|e| QueryError::sql(name, e))?
            .schema();
        let spec = crate::cluster::snapshot::SnapshotSpec::of(table)
            .map_err(|e| QueryError::sql(name, e))?;
        let provider = crate::cluster::snapshot::SnapshotTable::new(spec, schema).map_err(err)?;
        let _ = ctx.deregister_table(name);
        ctx.register_table(name, Arc::new(provider)).map_err(err)?;
    }
    Ok(())
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
        let path = f.to_string_lossy();
        let options = CsvReadOptions::new().schema(&schema).has_header(true);
        parstat_plan::register_csv(ctx, &name, &path, options)
            .await
            .map_err(|e| QueryError::sql(f.display().to_string(), e))?;
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

/// Registers `batches` as table `name`, replacing any table of that name.
pub(super) fn register_batches(
    ctx: &SessionContext,
    name: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(), QueryError> {
    let mem = MemTable::try_new(schema, vec![batches]).map_err(|e| QueryError::sql(name, e))?;
    let _ = ctx.deregister_table(name);
    ctx.register_table(name, Arc::new(mem))
        .map_err(|e| QueryError::sql(name, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_the_sorted_csv_files_with_text_columns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b_areas.csv"), "code, name\n0436,Ba Đình\n").unwrap();
        std::fs::write(dir.path().join("a.csv"), "x\n1\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a seed").unwrap();
        let files = seed_files(dir.path());
        let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap()).collect();
        assert_eq!(names, ["a.csv", "b_areas.csv"]);
        let (name, schema) = seed_schema(&files[1]).unwrap();
        assert_eq!(name, "b_areas");
        let cols: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(cols, ["code", "name"]);
        assert!(schema
            .fields()
            .iter()
            .all(|f| f.data_type() == &DataType::Utf8));
        assert!(seed_files(&dir.path().join("absent")).is_empty());
    }
}
