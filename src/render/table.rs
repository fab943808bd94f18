//! Result tables as rows of typed JSON values, the shape templates and workbooks read:
//! integers stay integers, amounts become numbers, dates and instants local text.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType, UInt16Type, UInt32Type, UInt64Type,
    UInt8Type,
};
use chrono_tz::Tz;
use serde_json::{Map, Value};

/// One row: column name -> value.
pub type Row = Map<String, Value>;

/// Every row of `batches`, instants shown in `tz`.
pub fn rows(batches: &[RecordBatch], tz: Tz) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        for i in 0..b.num_rows() {
            let mut row = Map::with_capacity(b.num_columns());
            for (f, c) in schema.fields().iter().zip(b.columns()) {
                row.insert(f.name().clone(), value(c.as_ref(), i, tz));
            }
            out.push(row);
        }
    }
    out
}

/// The value at row `i` of `a`.
pub fn value(a: &dyn Array, i: usize, tz: Tz) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float32 => number(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => number(a.as_primitive::<Float64Type>().value(i)),
        DataType::Decimal128(_, scale) => {
            let v = a.as_primitive::<Decimal128Type>().value(i);
            if *scale == 0 && i64::try_from(v).is_ok() {
                Value::from(v as i64)
            } else {
                number(v as f64 / 10f64.powi(*scale as i32))
            }
        }
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::String(a.as_string_view().value(i).to_string()),
        DataType::Date32 => {
            let days = a.as_primitive::<Date32Type>().value(i);
            let d = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
                + chrono::Duration::days(days as i64);
            Value::String(d.to_string())
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let m = a.as_primitive::<TimestampMicrosecondType>().value(i);
            let t = chrono::DateTime::from_timestamp_micros(m).unwrap_or_default();
            Value::String(t.with_timezone(&tz).to_rfc3339())
        }
        _ => Value::String(arrow::util::display::array_value_to_string(a, i).unwrap_or_default()),
    }
}

fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// A value as a number, if it is one.
pub fn num(row: &Row, col: &str) -> Option<f64> {
    row.get(col).and_then(Value::as_f64)
}

/// A value as text ("" for null).
pub fn text(row: &Row, col: &str) -> String {
    match row.get(col) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}
