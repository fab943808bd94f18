//! The quarantine table: rows that failed validation, with the run, their position in the
//! source, the row as JSON (personal data already hashed or left out) and every reason.

use arrow::array::{RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use std::sync::Arc;

use super::{commit_properties, write, Warehouse, WarehouseError, WriteMode};

pub const TABLE: &str = "quarantine";

/// One rejected row.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// `file:line`, `file[sheet]:row` or `row N` of the query's result.
    pub position: String,
    pub row_json: String,
    pub reasons: Vec<String>,
}

pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("dataset", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, false),
        Field::new("row_json", DataType::Utf8, false),
        Field::new("reasons", DataType::Utf8, false),
        Field::new(
            "quarantined_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// Stores rejected rows, keyed by pipeline, position and the row itself: a position alone is
/// not a row's identity (`row 12` of today's query is not yesterday's), so no run's rejected
/// row replaces another's, while the same row read again (a rerun, an overlap) counts once.
pub async fn store(
    wh: &Warehouse,
    pipeline: &str,
    dataset: &str,
    run_id: &str,
    rows: &[Rejected],
) -> Result<(), WarehouseError> {
    if rows.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now().timestamp_micros();
    let mut b: Vec<StringBuilder> = (0..6).map(|_| StringBuilder::new()).collect();
    let mut t = TimestampMicrosecondBuilder::new();
    for r in rows {
        b[0].append_value(pipeline);
        b[1].append_value(dataset);
        b[2].append_value(run_id);
        b[3].append_value(&r.position);
        b[4].append_value(&r.row_json);
        b[5].append_value(r.reasons.join("; "));
        t.append_value(now);
    }
    let mut cols: Vec<arrow::array::ArrayRef> =
        b.iter_mut().map(|x| Arc::new(x.finish()) as _).collect();
    cols.push(Arc::new(t.finish().with_timezone("UTC")));
    let batch = RecordBatch::try_new(schema(), cols).map_err(|e| WarehouseError::Data {
        table: TABLE.into(),
        message: e.to_string(),
    })?;
    let key = [
        "pipeline".to_string(),
        "position".to_string(),
        "row_json".to_string(),
    ];
    let batch = super::dedup(&batch, &key, None).map_err(|e| WarehouseError::Data {
        table: TABLE.into(),
        message: e.to_string(),
    })?;
    let table = wh.open(TABLE).await?;
    let props = commit_properties(vec![("parstat.run_id".into(), run_id.into())], vec![]);
    write(
        table,
        TABLE,
        batch,
        None,
        WriteMode::Merge {
            key: &key,
            order: None,
        },
        props,
    )
    .await?;
    Ok(())
}
