//! A Delta table's pinned version as a plain Parquet scan: the files of that version with their
//! partition values, so that a cluster's executors read exactly those files through
//! DataFusion's own scan node, which Ballista serializes (deltalake has no codec for its own).

use std::sync::Arc;

use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::TableParquetOptions;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// One data file of the version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotFile {
    /// The object's path in its store (from the store's root, not the table's).
    pub location: String,
    pub size: u64,
    /// The file's value of each partition column, in `partition_columns` order, as the Delta
    /// log writes them (text; `None` for null).
    pub partition_values: Vec<Option<String>>,
}

/// What a plan sent to the cluster carries of a table: where its files are, which they are,
/// and how they are partitioned. The schema travels in the plan itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotSpec {
    /// `file:///` or `s3://bucket`.
    pub store: String,
    pub version: u64,
    pub partition_columns: Vec<String>,
    pub files: Vec<SnapshotFile>,
}

impl SnapshotSpec {
    /// The files of `table`'s loaded version.
    pub fn of(table: &DeltaTable) -> Result<SnapshotSpec, deltalake::DeltaTableError> {
        let snapshot = table.snapshot()?;
        let version = table.version().unwrap_or_default();
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let url = table.table_url();
        let (store, root) = match url.scheme() {
            "file" => ("file:///".to_string(), url.path().to_string()),
            scheme => (
                format!("{scheme}://{}", url.host_str().unwrap_or_default()),
                url.path().to_string(),
            ),
        };
        let root = Path::from_url_path(&root).map_err(object_store::Error::from)?;
        let mut files = Vec::new();
        for f in snapshot.log_data().iter() {
            if f.deletion_vector_descriptor().is_some() {
                // Rows a deletion vector removes would be read back by a plain Parquet scan.
                return Err(deltalake::DeltaTableError::Generic(format!(
                    "{}: a file has a deletion vector, which the cluster's Parquet scan cannot apply",
                    table.table_url()
                )));
            }
            let values = f.partition_values_map();
            let location = Path::from_iter(root.parts().chain(f.object_store_path().parts()));
            files.push(SnapshotFile {
                location: location.to_string(),
                size: f.size().max(0) as u64,
                partition_values: partition_columns
                    .iter()
                    .map(|c| values.get(c).cloned().flatten())
                    .collect(),
            });
        }
        files.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(SnapshotSpec {
            store,
            version,
            partition_columns,
            files,
        })
    }
}

/// The table: `schema` is the Delta table's, in its column order.
#[derive(Debug)]
pub struct SnapshotTable {
    pub spec: SnapshotSpec,
    schema: SchemaRef,
}

impl SnapshotTable {
    pub fn new(spec: SnapshotSpec, schema: SchemaRef) -> Result<Self> {
        for c in &spec.partition_columns {
            schema.field_with_name(c)?;
        }
        Ok(SnapshotTable { spec, schema })
    }

    /// The Parquet scan's own column order: the files' columns, then the partition columns.
    fn scan_fields(&self) -> (Vec<FieldRef>, Vec<FieldRef>) {
        let is_partition = |f: &FieldRef| self.spec.partition_columns.contains(f.name());
        let file: Vec<FieldRef> = self
            .schema
            .fields()
            .iter()
            .filter(|f| !is_partition(f))
            .cloned()
            .collect();
        let partitions = self
            .spec
            .partition_columns
            .iter()
            .map(|c| Arc::new(self.schema.field_with_name(c).expect("checked").clone()))
            .collect();
        (file, partitions)
    }

    /// Where column `i` of the table's schema is in the scan's order.
    fn scan_index(&self, i: usize, file: &[FieldRef]) -> usize {
        let name = self.schema.field(i).name();
        match self.spec.partition_columns.iter().position(|c| c == name) {
            Some(p) => file.len() + p,
            None => file
                .iter()
                .position(|f| f.name() == name)
                .expect("a column"),
        }
    }

    fn partitioned_file(
        &self,
        f: &SnapshotFile,
        partitions: &[FieldRef],
    ) -> Result<PartitionedFile> {
        let values = f
            .partition_values
            .iter()
            .zip(partitions)
            .map(|(v, field)| partition_value(v.as_deref(), field))
            .collect::<Result<Vec<_>>>()?;
        let mut file = PartitionedFile::new(String::new(), f.size).with_partition_values(values);
        file.object_meta.location =
            Path::parse(&f.location).map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(file)
    }
}

/// A partition value as Delta writes it, in the column's type.
fn partition_value(v: Option<&str>, field: &Field) -> Result<ScalarValue> {
    match v {
        None => ScalarValue::try_from(field.data_type()),
        Some(text) => ScalarValue::try_from_string(text.to_string(), field.data_type()),
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The filters prune row groups and pages; DataFusion still applies them above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (file, partitions) = self.scan_fields();
        let indices: Vec<usize> = match projection {
            Some(p) => p.iter().map(|&i| self.scan_index(i, &file)).collect(),
            None => (0..self.schema.fields().len())
                .map(|i| self.scan_index(i, &file))
                .collect(),
        };
        if self.spec.files.is_empty() {
            let projected = self.schema.project(
                &projection
                    .cloned()
                    .unwrap_or_else(|| (0..self.schema.fields().len()).collect()),
            )?;
            return Ok(Arc::new(EmptyExec::new(Arc::new(projected))));
        }
        let file_schema = Arc::new(Schema::new(file.clone()));
        let scan_schema = Schema::new([file.clone(), partitions.clone()].concat());
        let table_schema = TableSchema::builder(file_schema)
            .with_table_partition_cols(partitions.clone())
            .build();
        let mut source =
            ParquetSource::new(table_schema).with_table_parquet_options(TableParquetOptions {
                global: state.config_options().execution.parquet.clone(),
                ..Default::default()
            });
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = datafusion::common::DFSchema::try_from(scan_schema)?;
            let physical = state.create_physical_expr(predicate, &df_schema)?;
            source = source.with_predicate(physical);
        }
        // The files are spread over the session's partitions in turn, so that every core
        // (or executor task) reads some of them.
        let n = state.config_options().execution.target_partitions.max(1);
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n.min(self.spec.files.len())];
        for (i, f) in self.spec.files.iter().enumerate() {
            let g = i % groups.len();
            groups[g].push(self.partitioned_file(f, &partitions)?);
        }
        let store = ObjectStoreUrl::parse(&self.spec.store)?;
        let config = FileScanConfigBuilder::new(store, Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(Some(indices))?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
