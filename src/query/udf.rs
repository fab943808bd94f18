//! SQL functions parstat adds for analysts: `local_date(ts)` and `local_month(ts)`, which turn
//! a UTC instant into the project time zone's calendar date or `YYYY-MM` month, because the
//! contract compares "same day" on local dates and never by truncating UTC.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Date32Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{DateTime, Datelike, NaiveDate, Offset, TimeZone};
use chrono_tz::Tz;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

const EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Registers the functions in `ctx` for time zone `tz`.
pub fn register(ctx: &SessionContext, tz: Tz) {
    for f in functions(tz) {
        ctx.register_udf(f);
    }
}

/// parstat's functions for time zone `tz`.
pub fn functions(tz: Tz) -> Vec<ScalarUDF> {
    [Local::Date, Local::Month]
        .into_iter()
        .map(|what| ScalarUDF::new_from_impl(LocalTime::new(what, tz)))
        .collect()
}

/// The function named `name` for time zone `tz`, as a plan sent to a cluster names it.
pub fn by_name(name: &str, tz: Tz) -> Option<ScalarUDF> {
    functions(tz).into_iter().find(|f| f.name() == name)
}

/// The time zone a function of parstat's works in, or `None` for any other function: a plan
/// sent to a cluster carries it, so every executor computes in the project's zone.
pub fn zone_of(f: &ScalarUDF) -> Option<Tz> {
    let inner: &dyn std::any::Any = f.inner().as_ref();
    inner.downcast_ref::<LocalTime>().map(|l| l.tz)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Local {
    /// `local_date(ts)`: the local calendar date.
    Date,
    /// `local_month(ts)`: the local month, `YYYY-MM`.
    Month,
}

/// A UTC instant seen in the project's time zone.
#[derive(Debug, PartialEq, Eq, Hash)]
struct LocalTime {
    what: Local,
    tz: Tz,
    signature: Signature,
}

impl LocalTime {
    fn new(what: Local, tz: Tz) -> Self {
        LocalTime {
            what,
            tz,
            signature: Signature::exact(vec![input()], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for LocalTime {
    fn name(&self) -> &str {
        match self.what {
            Local::Date => "local_date",
            Local::Month => "local_month",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(match self.what {
            Local::Date => DataType::Date32,
            Local::Month => DataType::Utf8,
        })
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let tz = self.tz;
        match self.what {
            Local::Date => {
                let day = move |m: i64| days_since_epoch(local_day(tz, m));
                map_timestamps(
                    &args.args,
                    |micros| Ok(ScalarValue::Date32(micros.map(day))),
                    |a| {
                        let out: Date32Array = a.iter().map(|v| v.map(day)).collect();
                        Ok(Arc::new(out) as ArrayRef)
                    },
                )
            }
            Local::Month => {
                let month = move |m: i64| {
                    let d = local_day(tz, m);
                    format!("{:04}-{:02}", d.year(), d.month())
                };
                map_timestamps(
                    &args.args,
                    |micros| Ok(ScalarValue::Utf8(micros.map(month))),
                    |a| {
                        let out: StringArray = a.iter().map(|v| v.map(month)).collect();
                        Ok(Arc::new(out) as ArrayRef)
                    },
                )
            }
        }
    }
}

fn input() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
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

    #[test]
    fn a_function_is_found_by_name_with_its_zone() {
        let tz: Tz = "Asia/Ho_Chi_Minh".parse().unwrap();
        let f = by_name("local_month", tz).unwrap();
        assert_eq!(f.name(), "local_month");
        assert_eq!(zone_of(&f), Some(tz));
        assert!(by_name("local_year", tz).is_none());
        let other = datafusion::functions::string::upper();
        assert_eq!(zone_of(&other), None);
    }
}
