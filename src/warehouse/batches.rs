//! Arrow batch helpers of the warehouse: Delta's types, keys as bytes, deduplication by key
//! and the sort of a chunk before it is written.

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema as ArrowSchema};
use arrow::row::{RowConverter, SortField};
use std::collections::HashMap;
use std::sync::Arc;

/// Delta has no unsigned integers: UInt8/16/32 are stored as the next wider signed type.
pub fn to_delta(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    cast_batch(batch, &Arc::new(delta_schema(batch.schema().as_ref())))
}

/// `batch` with each column cast to the type of its field in `schema` (same order).
pub fn cast_batch(
    batch: &RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let cols: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(schema.clone(), cols)
}

pub fn delta_schema(schema: &ArrowSchema) -> ArrowSchema {
    ArrowSchema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::UInt8 => DataType::Int16,
                    DataType::UInt16 => DataType::Int32,
                    DataType::UInt32 => DataType::Int64,
                    t => t.clone(),
                };
                f.as_ref().clone().with_data_type(t)
            })
            .collect::<Vec<_>>(),
    )
}

/// The key of each row as bytes: a one-column text key without nulls as its own bytes (no
/// copy; the usual case), any other key in Arrow's row format.
pub(super) enum Keys {
    Text(arrow::array::StringArray),
    Rows(arrow::row::Rows),
}

impl Keys {
    pub(super) fn of(
        batch: &RecordBatch,
        key: &[String],
    ) -> Result<Keys, arrow::error::ArrowError> {
        if let [k] = key {
            let c = batch.column(batch.schema().index_of(k)?);
            if let Some(a) = c.as_any().downcast_ref::<arrow::array::StringArray>() {
                if a.null_count() == 0 {
                    return Ok(Keys::Text(a.clone()));
                }
            }
        }
        key_rows(batch, key).map(Keys::Rows)
    }

    pub(super) fn get(&self, i: usize) -> &[u8] {
        match self {
            Keys::Text(a) => a.value(i).as_bytes(),
            Keys::Rows(r) => r.row(i).data(),
        }
    }
}

/// The key columns of each row in a comparable, hashable byte form.
fn key_rows(
    batch: &RecordBatch,
    key: &[String],
) -> Result<arrow::row::Rows, arrow::error::ArrowError> {
    let idx: Vec<usize> = key
        .iter()
        .map(|k| batch.schema().index_of(k))
        .collect::<Result<_, _>>()?;
    let conv = RowConverter::new(
        idx.iter()
            .map(|i| SortField::new(batch.column(*i).data_type().clone()))
            .collect(),
    )?;
    conv.convert_columns(
        &idx.iter()
            .map(|i| batch.column(*i).clone())
            .collect::<Vec<_>>(),
    )
}

/// Keeps one row per primary key: the one with the greatest `order` value (the newest
/// `updated_at`), the last one read on ties. A merge must not see a key twice.
pub fn dedup(
    batch: &RecordBatch,
    key: &[String],
    order: Option<&str>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let keys = Keys::of(batch, key)?;
    let order_col = match order {
        Some(o) => Some(cast(
            batch.column(batch.schema().index_of(o)?),
            &DataType::Int64,
        )?),
        None => None,
    };
    let order_val = |i: usize| -> i64 {
        order_col
            .as_ref()
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
            .map(|a| if a.is_null(i) { i64::MIN } else { a.value(i) })
            .unwrap_or(0)
    };
    let mut best: HashMap<&[u8], usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(batch.num_rows(), Default::default());
    for i in 0..batch.num_rows() {
        let k = keys.get(i);
        match best.get(k) {
            Some(&j) if order_val(j) > order_val(i) => {}
            _ => {
                best.insert(k, i);
            }
        }
    }
    if best.len() == batch.num_rows() {
        return Ok(batch.clone());
    }
    let mut keep: Vec<u32> = best.values().map(|i| *i as u32).collect();
    keep.sort_unstable();
    let indices = arrow::array::UInt32Array::from(keep);
    let cols = batch
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c, &indices, None))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(batch.schema(), cols)
}

/// `batch` sorted by `columns` (ascending, NULLs last); unchanged when there are none. The
/// writer keeps the order within each partition's file, so the file's pages hold ranges of
/// the first column and a filter on it skips pages by their statistics. The sort is stable:
/// rows equal in every column keep their reading order, which the deduplication's "last one
/// read wins" relies on.
pub fn sort_batch(
    batch: &RecordBatch,
    columns: &[String],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if columns.is_empty() || batch.num_rows() < 2 {
        return Ok(batch.clone());
    }
    let keys = columns
        .iter()
        .map(|c| {
            Ok(arrow::compute::SortColumn {
                values: batch.column(batch.schema().index_of(c)?).clone(),
                options: Some(arrow::compute::SortOptions {
                    descending: false,
                    nulls_first: false,
                }),
            })
        })
        .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
    let n = u32::try_from(batch.num_rows()).map_err(|_| {
        arrow::error::ArrowError::ComputeError("a batch to sort holds over 2^32 rows".into())
    })?;
    // The first column is usually a time: sorted as plain integers, which costs a fraction of
    // a comparison through Arrow's comparator; that comparator only breaks the first
    // column's ties.
    let first = &keys[0].values;
    let plain = first.data_type().is_integer() || first.data_type().is_temporal();
    let order: Vec<u32> =
        if plain && arrow::compute::can_cast_types(first.data_type(), &DataType::Int64) {
            let ints = cast(first, &DataType::Int64)?;
            let ints = ints
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .expect("cast to Int64");
            let rest = arrow::compute::LexicographicalComparator::try_new(&keys[1..])?;
            let mut rows: Vec<(bool, i64, u32)> = (0..n)
                .map(|i| {
                    if ints.is_null(i as usize) {
                        (true, 0, i)
                    } else {
                        (false, ints.value(i as usize), i)
                    }
                })
                .collect();
            rows.sort_unstable_by(|a, b| {
                (a.0, a.1)
                    .cmp(&(b.0, b.1))
                    .then_with(|| rest.compare(a.2 as usize, b.2 as usize))
                    .then(a.2.cmp(&b.2))
            });
            rows.into_iter().map(|r| r.2).collect()
        } else {
            let all = arrow::compute::LexicographicalComparator::try_new(&keys)?;
            let mut rows: Vec<u32> = (0..n).collect();
            rows.sort_unstable_by(|a, b| all.compare(*a as usize, *b as usize).then(a.cmp(b)));
            rows
        };
    arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(order))
}
