//! Where the tables live: the warehouse's base URL (a folder or an S3 prefix), opening a
//! table for reading or writing, the object store for state that is not a table, and a
//! table's registration for SQL.

use deltalake::DeltaTable;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use url::Url;

use super::{s3, WarehouseError};

/// Where the tables live.
#[derive(Debug, Clone)]
pub struct Warehouse {
    base: Url,
    /// delta-rs storage options of every table (on S3: an endpoint, credentials).
    options: HashMap<String, String>,
}

impl Warehouse {
    /// `url` as written in parstat.toml: a folder (relative to the project), `file://` or `s3://`.
    pub fn new(project_root: &Path, url: &str) -> Result<Warehouse, WarehouseError> {
        let bad = |message: String| WarehouseError::Url {
            url: url.to_string(),
            message,
        };
        let base = if url.contains("://") {
            let mut u = Url::parse(url).map_err(|e| bad(e.to_string()))?;
            if !u.path().ends_with('/') {
                u.set_path(&format!("{}/", u.path()));
            }
            u
        } else {
            // Nothing is created here: a read-only command leaves no folder behind; the
            // first write creates its table's folder (see `open`).
            let path = project_root.join(url);
            let abs = match path.canonicalize() {
                Ok(p) => p,
                Err(_) => std::path::absolute(&path).map_err(|e| bad(e.to_string()))?,
            };
            Url::from_directory_path(&abs)
                .map_err(|_| bad(format!("{} is not an absolute folder", abs.display())))?
        };
        if matches!(base.scheme(), "s3" | "s3a") {
            s3::register();
        }
        Ok(Warehouse {
            options: HashMap::new(),
            base,
        })
    }

    /// More delta-rs storage options for every table (an endpoint, credentials), over the
    /// environment's `AWS_*` variables.
    pub fn with_storage_options(mut self, options: HashMap<String, String>) -> Warehouse {
        self.options.extend(options);
        self
    }

    /// The table if it was ever written, for reading; creates nothing.
    pub async fn read(&self, name: &str) -> Result<Option<DeltaTable>, WarehouseError> {
        if let Ok(p) = self.table_url(name).to_file_path() {
            if !p.join("_delta_log").is_dir() {
                return Ok(None);
            }
        }
        let table = self.open(name).await?;
        Ok(table.version().is_some().then_some(table))
    }

    pub fn table_url(&self, name: &str) -> Url {
        self.base
            .join(&format!("{name}/"))
            .expect("a table name is a valid path segment")
    }

    /// The table, loaded if it exists, uninitialised (version `None`) if not.
    pub async fn open(&self, name: &str) -> Result<DeltaTable, WarehouseError> {
        let url = self.table_url(name);
        // A local table's folder must exist before delta-rs opens it (object stores need none).
        if let Ok(p) = url.to_file_path() {
            std::fs::create_dir_all(&p).map_err(|e| WarehouseError::Url {
                url: url.to_string(),
                message: format!("cannot create {}: {e}", p.display()),
            })?;
        }
        DeltaTable::try_from_url_with_storage_options(url, self.options.clone())
            .await
            .map_err(|source| WarehouseError::Delta {
                table: name.to_string(),
                source: Box::new(source),
            })
    }
}

/// The object store and the path of `name` under the warehouse, for state that is not a
/// table (the delivery ledger, the scheduler's lease): a local folder or an S3 prefix.
pub fn object_store_at(
    project_root: &Path,
    warehouse_url: &str,
    name: &str,
) -> Result<(Arc<dyn object_store::ObjectStore>, object_store::path::Path), WarehouseError> {
    let err = |message: String| WarehouseError::Url {
        url: warehouse_url.to_string(),
        message,
    };
    let base = Warehouse::new(project_root, warehouse_url)?.table_url(name);
    match base.scheme() {
        "file" => {
            let dir = base
                .to_file_path()
                .map_err(|_| err(format!("{base} is not a local folder")))?;
            std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| err(e.to_string()))?;
            Ok((Arc::new(fs), object_store::path::Path::default()))
        }
        "s3" | "s3a" => {
            let s3 = s3::client(&base, &HashMap::new()).map_err(|e| err(e.to_string()))?;
            Ok((
                Arc::new(s3),
                object_store::path::Path::from(base.path().trim_matches('/')),
            ))
        }
        other => Err(err(format!("no object store for `{other}://` warehouses"))),
    }
}

/// Makes a warehouse table queryable by SQL under `name` in `ctx`.
pub async fn register(
    ctx: &datafusion::prelude::SessionContext,
    table: &DeltaTable,
    name: &str,
) -> Result<(), WarehouseError> {
    let err = |source: deltalake::DeltaTableError| WarehouseError::Delta {
        table: name.to_string(),
        source: Box::new(source),
    };
    table.update_datafusion_session(&ctx.state()).map_err(err)?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| WarehouseError::Data {
            table: name.to_string(),
            message: e.to_string(),
        })?;
    ctx.register_table(name, provider)
        .map_err(|e| WarehouseError::Data {
            table: name.to_string(),
            message: e.to_string(),
        })?;
    Ok(())
}
