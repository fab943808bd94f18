//! Published report tables: `published_<table>` in the warehouse, partitioned by period, each
//! period's rows replaced in one atomic commit, so trends and month-over-month changes read
//! exactly what was published.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;

use super::{commit_properties, to_delta, Warehouse, WarehouseError};

/// Columns the publication puts in front of a result's own columns.
pub const COLUMNS: &[&str] = &[
    "period",
    "period_rule",
    "period_start",
    "period_end",
    "run_id",
    "published_at",
];

/// The published copy of report table `table`, in the warehouse and in SQL.
pub fn published_name(table: &str) -> String {
    format!("published_{table}")
}

/// What identifies one publication of a table.
#[derive(Debug, Clone)]
pub struct Publication {
    /// `YYYY-MM`.
    pub period: String,
    pub period_rule: String,
    /// Period bounds, UTC microseconds.
    pub start: i64,
    pub end: i64,
    pub run_id: String,
    pub published_at: i64,
}

/// The publication columns, in front of the result's own columns.
pub fn schema(result: &Schema) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("period", DataType::Utf8, false),
        Field::new("period_rule", DataType::Utf8, false),
        Field::new("period_start", ts.clone(), false),
        Field::new("period_end", ts.clone(), false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("published_at", ts, false),
    ];
    for f in result.fields() {
        if !COLUMNS.contains(&f.name().as_str()) {
            fields.push(Field::new(f.name(), f.data_type().clone(), true));
        }
    }
    Arc::new(Schema::new(fields))
}

/// `batches` with the publication columns in front (a result column of the same name is
/// replaced: the publication states the period).
pub fn with_publication(
    result: &Schema,
    batches: &[RecordBatch],
    p: &Publication,
) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    let out_schema = schema(result);
    let keep: Vec<usize> = result
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !COLUMNS.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    let mut out = Vec::new();
    for b in batches {
        let n = b.num_rows();
        let ts = |v: i64| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(vec![v; n]).with_timezone("UTC"))
        };
        let text = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; n])) };
        let mut cols = vec![
            text(&p.period),
            text(&p.period_rule),
            ts(p.start),
            ts(p.end),
            text(&p.run_id),
            ts(p.published_at),
        ];
        cols.extend(keep.iter().map(|&i| b.column(i).clone()));
        out.push(RecordBatch::try_new(out_schema.clone(), cols)?);
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(out_schema));
    }
    Ok(out)
}

/// Replaces period `p.period` of `published_<table>` with `batches` in one commit. An empty
/// result removes what was published for the period before: the period has no data now.
pub async fn publish(
    wh: &Warehouse,
    table: &str,
    result: &Schema,
    batches: &[RecordBatch],
    p: &Publication,
) -> Result<u64, WarehouseError> {
    let name = published_name(table);
    let data = |e: arrow::error::ArrowError| WarehouseError::Data {
        table: name.clone(),
        message: e.to_string(),
    };
    let delta = |source: deltalake::DeltaTableError| WarehouseError::Delta {
        table: name.clone(),
        source: Box::new(source),
    };
    // The period is YYYY-MM, checked by its parser; assert it here since it enters a predicate.
    if !(p.period.len() == 7 && p.period.chars().all(|c| c.is_ascii_digit() || c == '-')) {
        return Err(WarehouseError::Data {
            table: name,
            message: format!("`{}` is not a period", p.period),
        });
    }
    let batches = with_publication(result, batches, p)
        .map_err(data)?
        .iter()
        .map(to_delta)
        .collect::<Result<Vec<_>, _>>()
        .map_err(data)?;
    let table = wh.open(&name).await?;
    let props = commit_properties(
        vec![
            ("parstat.run_id".into(), serde_json::json!(p.run_id)),
            ("parstat.period".into(), serde_json::json!(p.period)),
        ],
        vec![],
    );
    let table = if table.version().is_none() {
        table
            .write(batches)
            .with_save_mode(SaveMode::Append)
            .with_partition_columns(vec!["period".to_string()])
            .with_commit_properties(props)
            .await
            .map_err(delta)?
    } else {
        table
            .write(batches)
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(format!("period = '{}'", p.period))
            .with_partition_columns(vec!["period".to_string()])
            // A report whose SQL gained a column keeps its history; old periods read NULL.
            .with_schema_mode(SchemaMode::Merge)
            .with_commit_properties(props)
            .await
            .map_err(delta)?
    };
    Ok(table.version().unwrap_or(0))
}
