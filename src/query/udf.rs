//! SQL functions parstat adds for analysts: `local_date(ts)` and `local_month(ts)`, which turn
//! a UTC instant into the project time zone's calendar date or `YYYY-MM` month, because the
//! contract compares "same day" on local dates and never by truncating UTC.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Date32Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{DateTime, Datelike, NaiveDate, Offset, TimeZone};
use chrono_tz::Tz;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use datafusion::prelude::SessionContext;

const EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Registers the functions in `ctx` for time zone `tz`.
pub fn register(ctx: &SessionContext, tz: Tz) {
    ctx.register_udf(local_date(tz));
    ctx.register_udf(local_month(tz));
}

fn input() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn local_date(tz: Tz) -> ScalarUDF {
    create_udf(
        "local_date",
        vec![input()],
        DataType::Date32,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            map_timestamps(
                args,
                |micros| {
                    Ok(ScalarValue::Date32(
                        micros.map(|m| days_since_epoch(local_day(tz, m))),
                    ))
                },
                |a| {
                    let out: Date32Array = a
                        .iter()
                        .map(|v| v.map(|m| days_since_epoch(local_day(tz, m))))
                        .collect();
                    Ok(Arc::new(out) as ArrayRef)
                },
            )
        }),
    )
}

fn local_month(tz: Tz) -> ScalarUDF {
    create_udf(
        "local_month",
        vec![input()],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let month = |m: i64| {
                let d = local_day(tz, m);
                format!("{:04}-{:02}", d.year(), d.month())
            };
            map_timestamps(
                args,
                |micros| Ok(ScalarValue::Utf8(micros.map(month))),
                |a| {
                    let out: StringArray = a.iter().map(|v| v.map(month)).collect();
                    Ok(Arc::new(out) as ArrayRef)
                },
            )
        }),
    )
}

fn map_timestamps(
    args: &[ColumnarValue],
    scalar: impl Fn(Option<i64>) -> Result<ScalarValue, DataFusionError>,
    array: impl Fn(&TimestampMicrosecondArray) -> Result<ArrayRef, DataFusionError>,
) -> Result<ColumnarValue, DataFusionError> {
    match args.first() {
        Some(ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(v, _))) => {
            Ok(ColumnarValue::Scalar(scalar(*v)?))
        }
        Some(ColumnarValue::Scalar(ScalarValue::Null)) => Ok(ColumnarValue::Scalar(scalar(None)?)),
        Some(ColumnarValue::Array(a)) => {
            let ts = a
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .ok_or_else(|| {
                    DataFusionError::Execution(format!(
                        "expected a timestamp in microseconds, got {}",
                        a.data_type()
                    ))
                })?;
            Ok(ColumnarValue::Array(array(ts)?))
        }
        other => Err(DataFusionError::Execution(format!(
            "expected one timestamp argument, got {other:?}"
        ))),
    }
}

/// The local calendar date of a UTC instant in microseconds.
pub fn local_day(tz: Tz, micros: i64) -> NaiveDate {
    let utc = DateTime::from_timestamp_micros(micros).unwrap_or_default();
    let offset = tz.offset_from_utc_datetime(&utc.naive_utc()).fix();
    (utc.naive_utc() + offset).date()
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - EPOCH_DAYS_FROM_CE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_day_is_taken_in_the_zone_not_in_utc() {
        let tz: Tz = "Asia/Ho_Chi_Minh".parse().unwrap();
        // 2026-10-31 17:30 UTC is 2026-11-01 00:30 in Hà Tĩnh.
        let m = chrono::Utc
            .with_ymd_and_hms(2026, 10, 31, 17, 30, 0)
            .unwrap()
            .timestamp_micros();
        assert_eq!(local_day(tz, m).to_string(), "2026-11-01");
        assert_eq!(
            days_since_epoch(NaiveDate::from_ymd_opt(1970, 1, 2).unwrap()),
            1
        );
    }
}
