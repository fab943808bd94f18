//! How parstat's parts of a plan travel to the scheduler and executors: its SQL functions with
//! the project's time zone, warehouse tables as pinned file lists, and small in-memory tables
//! (seeds, empty datasets). Everything else is Ballista's own codec.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result, TableReference};
use datafusion::datasource::MemTable;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use super::snapshot::{SnapshotSpec, SnapshotTable};
use crate::query::udf;

/// The first byte of an encoded table: which kind it is.
const SNAPSHOT: u8 = b'S';
const MEMORY: u8 = b'M';

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A parstat function carries its time zone's name; any other goes to `inner`.
fn encode_udf(f: &ScalarUDF, buf: &mut Vec<u8>) -> Option<()> {
    let tz = udf::zone_of(f)?;
    buf.extend_from_slice(tz.name().as_bytes());
    Some(())
}

fn decode_udf(name: &str, buf: &[u8]) -> Option<Result<Arc<ScalarUDF>>> {
    let probe: chrono_tz::Tz = chrono_tz::UTC;
    udf::by_name(name, probe)?;
    Some(
        std::str::from_utf8(buf)
            .ok()
            .and_then(|s| s.parse::<chrono_tz::Tz>().ok())
            .and_then(|tz| udf::by_name(name, tz))
            .map(Arc::new)
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "function {name}: the plan carries no valid time zone ({} bytes)",
                    buf.len()
                ))
            }),
    )
}

/// The plan codec of the client and the scheduler.
#[derive(Debug)]
pub struct LogicalCodec {
    inner: Arc<dyn LogicalExtensionCodec>,
}

impl Default for LogicalCodec {
    fn default() -> Self {
        LogicalCodec {
            inner: Arc::new(ballista_core::serde::BallistaLogicalExtensionCodec::default()),
        }
    }
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match buf.split_first() {
            Some((&SNAPSHOT, rest)) => {
                let spec: SnapshotSpec = serde_json::from_slice(rest).map_err(external)?;
                Ok(Arc::new(SnapshotTable::new(spec, schema)?))
            }
            Some((&MEMORY, rest)) => {
                let batches = read_ipc(rest)?;
                Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
            }
            _ => self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(t) = node.downcast_ref::<SnapshotTable>() {
            buf.push(SNAPSHOT);
            serde_json::to_writer(&mut *buf, &t.spec).map_err(external)?;
            return Ok(());
        }
        if let Some(m) = node.downcast_ref::<MemTable>() {
            buf.push(MEMORY);
            let mut batches = Vec::new();
            for partition in &m.batches {
                let rows = partition.try_read().map_err(|_| {
                    DataFusionError::Internal(format!("table {table_ref} is being written"))
                })?;
                batches.extend(rows.iter().cloned());
            }
            write_ipc(&m.schema(), &batches, buf)?;
            return Ok(());
        }
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        decode_udf(name, buf).unwrap_or_else(|| self.inner.try_decode_udf(name, buf))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        match encode_udf(node, buf) {
            Some(()) => Ok(()),
            None => self.inner.try_encode_udf(node, buf),
        }
    }
}

/// The stage codec of the scheduler and the executors: the scans are DataFusion's own nodes,
/// so only the functions need parstat's part.
#[derive(Debug)]
pub struct PhysicalCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
}

impl Default for PhysicalCodec {
    fn default() -> Self {
        PhysicalCodec {
            inner: Arc::new(ballista_core::serde::BallistaPhysicalExtensionCodec::default()),
        }
    }
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        decode_udf(name, buf).unwrap_or_else(|| self.inner.try_decode_udf(name, buf))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        match encode_udf(node, buf) {
            Some(()) => Ok(()),
            None => self.inner.try_encode_udf(node, buf),
        }
    }
}

fn write_ipc(schema: &SchemaRef, batches: &[RecordBatch], buf: &mut Vec<u8>) -> Result<()> {
    let mut w = StreamWriter::try_new(buf, schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(())
}

fn read_ipc(buf: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(buf, None)?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn a_function_travels_with_its_time_zone() {
        let tz: chrono_tz::Tz = "Asia/Ho_Chi_Minh".parse().unwrap();
        let f = udf::by_name("local_date", tz).unwrap();
        let codec = PhysicalCodec::default();
        let mut buf = Vec::new();
        codec.try_encode_udf(&f, &mut buf).unwrap();
        assert_eq!(buf, b"Asia/Ho_Chi_Minh");
        let back = codec.try_decode_udf("local_date", &buf).unwrap();
        assert_eq!(udf::zone_of(&back), Some(tz));
        // A plan that lost the zone is refused, not computed in another one.
        assert!(codec.try_decode_udf("local_date", b"").is_err());
    }

    #[test]
    fn a_memory_table_travels_with_its_rows() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        let table = Arc::new(MemTable::try_new(schema.clone(), vec![vec![batch.clone()]]).unwrap());
        let codec = LogicalCodec::default();
        let mut buf = Vec::new();
        codec
            .try_encode_table_provider(&TableReference::bare("t"), table, &mut buf)
            .unwrap();
        let ctx = TaskContext::default();
        let back = codec
            .try_decode_table_provider(&buf, &TableReference::bare("t"), schema, &ctx)
            .unwrap();
        let m = back.downcast_ref::<MemTable>().unwrap();
        let rows: Vec<RecordBatch> = m.batches[0].try_read().unwrap().clone();
        assert_eq!(rows, vec![batch]);
    }
}
