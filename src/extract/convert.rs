//! Typing one row: each source cell becomes the dataset column's Arrow value, after the
//! pipeline's value mapping and time format, with every reason a row is invalid collected
//! (types, nulls, allowed values), and personal data hashed or dropped on the way.

use arrow::array::*;
use arrow::datatypes::{DataType, Schema as ArrowSchema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::cell::Cell;
use super::pii::Hasher;
use crate::config::pipeline::ExtractJob;
use crate::config::schema::{AllowedValue, Granularity, Personal, Schema};

/// A typed value of one column of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    Null,
    Str(String),
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Microseconds since the epoch, UTC.
    Micros(i64),
    Days(i32),
    Dec(i128),
}

/// How one stored column is filled from the source row.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    /// Index of the cell in the source row, `None` when the source lacks the column.
    pub source: Option<usize>,
    pub format: Option<String>,
    pub values: Option<BTreeMap<String, toml::Value>>,
    pub allowed: Option<Vec<AllowedValue>>,
    pub personal: Option<Personal>,
}

/// Typing of a whole row into the dataset's stored columns (plus a derived partition column).
pub struct RowPlan {
    pub columns: Vec<ColumnPlan>,
    /// (index of the source column in `columns`, granularity) of a derived partition column.
    pub partition: Option<(String, usize, Granularity)>,
    pub tz: chrono_tz::Tz,
    pub schema: Arc<ArrowSchema>,
    hasher: Option<Hasher>,
}

impl RowPlan {
    /// `source_names` are the names of the source row's cells, already in dataset-column terms.
    pub fn new(
        schema: &Schema,
        job: &ExtractJob,
        source_names: &[String],
        tz: chrono_tz::Tz,
        hasher: Option<Hasher>,
    ) -> RowPlan {
        Self::with_maps(schema, &job.formats, &job.values, source_names, tz, hasher)
    }

    /// A plan for text cells with no pipeline around them (report unit tests' inputs): the
    /// default time formats, no value mapping, personal data kept as written.
    pub fn plain(schema: &Schema, source_names: &[String], tz: chrono_tz::Tz) -> RowPlan {
        Self::with_maps(
            schema,
            &BTreeMap::new(),
            &BTreeMap::new(),
            source_names,
            tz,
            None,
        )
    }

    fn with_maps(
        schema: &Schema,
        formats: &BTreeMap<String, String>,
        values: &BTreeMap<String, BTreeMap<String, toml::Value>>,
        source_names: &[String],
        tz: chrono_tz::Tz,
        hasher: Option<Hasher>,
    ) -> RowPlan {
        let columns: Vec<ColumnPlan> = schema
            .stored_columns()
            .map(|c| ColumnPlan {
                name: c.name.clone(),
                data_type: if c.personal == Some(Personal::Hash) {
                    DataType::Utf8
                } else {
                    c.data_type.clone()
                },
                nullable: c.nullable,
                source: source_names.iter().position(|n| n == &c.name),
                format: formats.get(&c.name).cloned(),
                values: values.get(&c.name).cloned(),
                allowed: c.allowed.clone(),
                personal: c.personal,
            })
            .collect();
        let partition = schema.partition.as_ref().and_then(|p| {
            let (from, g) = p.from.as_ref()?;
            let i = columns.iter().position(|c| &c.name == from)?;
            Some((p.column.clone(), i, *g))
        });
        RowPlan {
            columns,
            partition,
            tz,
            schema: schema.arrow_schema(),
            hasher,
        }
    }

    /// Types one row. `Err` holds every reason the row is invalid.
    pub fn type_row(&self, cells: &[Cell], out: &mut Vec<Typed>) -> Result<(), Vec<String>> {
        out.clear();
        let mut reasons = Vec::new();
        for c in &self.columns {
            let cell = c.source.and_then(|i| cells.get(i)).unwrap_or(&Cell::Null);
            match self.type_cell(c, cell) {
                Ok(v) => out.push(v),
                Err(r) => {
                    reasons.push(format!("{}: {r}", c.name));
                    out.push(Typed::Null);
                }
            }
        }
        if let Some((_, i, g)) = &self.partition {
            match &out[*i] {
                Typed::Micros(us) => {
                    let local =
                        DateTime::from_timestamp_micros(*us).map(|t| t.with_timezone(&self.tz));
                    out.push(match (local, g) {
                        (Some(t), Granularity::Month) => Typed::Str(t.format("%Y-%m").to_string()),
                        (Some(t), Granularity::Year) => Typed::Str(t.format("%Y").to_string()),
                        (None, _) => Typed::Null,
                    })
                }
                Typed::Days(d) => {
                    let date = NaiveDate::from_num_days_from_ce_opt(*d + 719_163);
                    out.push(match (date, g) {
                        (Some(t), Granularity::Month) => Typed::Str(t.format("%Y-%m").to_string()),
                        (Some(t), Granularity::Year) => Typed::Str(t.format("%Y").to_string()),
                        (None, _) => Typed::Null,
                    })
                }
                _ => out.push(Typed::Null),
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn type_cell(&self, c: &ColumnPlan, cell: &Cell) -> Result<Typed, String> {
        // Value mapping first: it works on the source's text.
        let mapped;
        let cell = match (&c.values, cell.text()) {
            (Some(map), Some(t)) => match map.get(t.trim()) {
                Some(toml::Value::String(s)) => {
                    mapped = Cell::Text(s.clone());
                    &mapped
                }
                Some(toml::Value::Integer(i)) => {
                    mapped = Cell::Int(*i);
                    &mapped
                }
                Some(toml::Value::Boolean(b)) => {
                    mapped = Cell::Bool(*b);
                    &mapped
                }
                Some(other) => return Err(format!("mapping gives unsupported value {other}")),
                None => {
                    return Err(format!(
                        "value {:?} has no mapping in the pipeline's [values.{}]",
                        t, c.name
                    ))
                }
            },
            _ => cell,
        };
        if cell.is_null() {
            return if c.nullable {
                Ok(Typed::Null)
            } else {
                Err("missing (the column is not nullable)".into())
            };
        }
        if let (Some(Personal::Hash), Some(h)) = (c.personal, &self.hasher) {
            return Ok(Typed::Str(h.hash(cell.text().unwrap_or_default().trim())));
        }
        let v = self.typed(c, cell)?;
        if let Some(allowed) = &c.allowed {
            let ok = match &v {
                Typed::Int(i) => allowed.contains(&AllowedValue::Int(*i)),
                Typed::Str(s) => allowed.contains(&AllowedValue::Text(s.clone())),
                _ => true,
            };
            if !ok {
                return Err(format!("{cell} is not an allowed value"));
            }
        }
        Ok(v)
    }

    fn typed(&self, c: &ColumnPlan, cell: &Cell) -> Result<Typed, String> {
        let bad = || format!("cannot read {cell} as {}", c.data_type);
        match &c.data_type {
            DataType::Utf8 => Ok(Typed::Str(match cell {
                Cell::Text(s) => s.trim().to_string(),
                other => other.text().unwrap_or_default(),
            })),
            DataType::Boolean => match cell {
                Cell::Bool(b) => Ok(Typed::Bool(*b)),
                Cell::Int(0) => Ok(Typed::Bool(false)),
                Cell::Int(1) => Ok(Typed::Bool(true)),
                Cell::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "t" | "1" => Ok(Typed::Bool(true)),
                    "false" | "f" | "0" => Ok(Typed::Bool(false)),
                    _ => Err(bad()),
                },
                _ => Err(bad()),
            },
            t if t.is_integer() => {
                let i = match cell {
                    Cell::Int(i) => *i,
                    Cell::Float(f) if f.fract() == 0.0 => *f as i64,
                    Cell::Text(s) => s.trim().parse::<i64>().map_err(|_| bad())?,
                    Cell::Decimal(v, 0) => i64::try_from(*v).map_err(|_| bad())?,
                    _ => return Err(bad()),
                };
                let (lo, hi): (i64, i64) = match t {
                    DataType::UInt8 => (0, u8::MAX as i64),
                    DataType::UInt16 => (0, u16::MAX as i64),
                    DataType::UInt32 => (0, u32::MAX as i64),
                    DataType::Int16 => (i16::MIN as i64, i16::MAX as i64),
                    DataType::Int32 => (i32::MIN as i64, i32::MAX as i64),
                    _ => (i64::MIN, i64::MAX),
                };
                if i < lo || i > hi {
                    return Err(format!("{i} is out of range for {t}"));
                }
                Ok(Typed::Int(i))
            }
            DataType::Float64 => match cell {
                Cell::Float(f) => Ok(Typed::Float(*f)),
                Cell::Int(i) => Ok(Typed::Float(*i as f64)),
                Cell::Decimal(v, s) => Ok(Typed::Float(*v as f64 / 10f64.powi(*s as i32))),
                Cell::Text(s) => s.trim().parse::<f64>().map(Typed::Float).map_err(|_| bad()),
                _ => Err(bad()),
            },
            DataType::Decimal128(_, scale) => {
                let (v, s) = match cell {
                    Cell::Decimal(v, s) => (*v, *s),
                    Cell::Int(i) => (*i as i128, 0),
                    Cell::Text(t) => parse_decimal(t.trim()).ok_or_else(bad)?,
                    Cell::Float(f) => ((f * 10f64.powi(*scale as i32)).round() as i128, *scale),
                    _ => return Err(bad()),
                };
                rescale(v, s, *scale)
                    .map(Typed::Dec)
                    .ok_or_else(|| format!("{cell} has more decimals than {}", scale))
            }
            DataType::Date32 => {
                let d = match cell {
                    Cell::Date(d) => *d,
                    Cell::Local(t) => t.date(),
                    Cell::Text(s) => {
                        let s = s.trim();
                        match &c.format {
                            Some(f) => NaiveDate::parse_from_str(s, f)
                                .map_err(|e| format!("{cell} does not match format {f:?}: {e}"))?,
                            None => NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?,
                        }
                    }
                    _ => return Err(bad()),
                };
                Ok(Typed::Days(d.num_days_from_ce() - 719_163))
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                let us = match cell {
                    Cell::Instant(us) => *us,
                    Cell::Local(t) => self.local_micros(*t).ok_or_else(bad)?,
                    Cell::Date(d) => self
                        .local_micros(d.and_hms_opt(0, 0, 0).expect("midnight"))
                        .ok_or_else(bad)?,
                    Cell::Text(s) => self
                        .parse_time(s.trim(), c.format.as_deref())
                        .map_err(|e| format!("{cell}: {e}"))?,
                    _ => return Err(bad()),
                };
                Ok(Typed::Micros(us))
            }
            other => Err(format!("unsupported column type {other}")),
        }
    }

    /// A local time of the project's zone as a UTC instant.
    fn local_micros(&self, t: NaiveDateTime) -> Option<i64> {
        self.tz
            .from_local_datetime(&t)
            .earliest()
            .map(|t| t.timestamp_micros())
    }

    /// Times with an explicit offset keep it; times without one are local.
    fn parse_time(&self, s: &str, format: Option<&str>) -> Result<i64, String> {
        if let Some(f) = format {
            if let Ok(t) = DateTime::parse_from_str(s, f) {
                return Ok(t.timestamp_micros());
            }
            let t = NaiveDateTime::parse_from_str(s, f)
                .map_err(|e| format!("does not match format {f:?}: {e}"))?;
            return self
                .local_micros(t)
                .ok_or_else(|| "not a valid local time".into());
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(t.timestamp_micros());
        }
        for f in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y%m%d%H%M%S",
        ] {
            if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
                return self
                    .local_micros(t)
                    .ok_or_else(|| "not a valid local time".into());
            }
        }
        Err(
            "not a time (expected RFC 3339, `YYYY-MM-DD HH:MM:SS` or the pipeline's [formats])"
                .into(),
        )
    }

    /// Builders for a batch of the stored schema.
    pub fn builders(&self, capacity: usize) -> Vec<ColumnBuilder> {
        self.schema
            .fields()
            .iter()
            .map(|f| ColumnBuilder::new(f.data_type(), capacity))
            .collect()
    }

    pub fn finish(
        &self,
        builders: &mut [ColumnBuilder],
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let arrays: Vec<ArrayRef> = builders.iter_mut().map(|b| b.finish()).collect();
        RecordBatch::try_new(self.schema.clone(), arrays)
    }

    /// The row with personal data hashed or left out, for the quarantine.
    pub fn safe_json(
        &self,
        names: &[String],
        cells: &[Cell],
        personal: &BTreeMap<String, Personal>,
    ) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (n, c) in names.iter().zip(cells) {
            match personal.get(n) {
                Some(Personal::Drop) => {}
                Some(Personal::Hash) => {
                    let v = match (c.text(), &self.hasher) {
                        (Some(t), Some(h)) => serde_json::Value::String(h.hash(t.trim())),
                        _ => serde_json::Value::Null,
                    };
                    m.insert(n.clone(), v);
                }
                None => {
                    m.insert(n.clone(), c.to_json());
                }
            }
        }
        serde_json::Value::Object(m)
    }
}

fn parse_decimal(s: &str) -> Option<(i128, i8)> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let v: i128 = digits.parse().ok()?;
    Some((if neg { -v } else { v }, frac.len() as i8))
}

fn rescale(v: i128, from: i8, to: i8) -> Option<i128> {
    if from == to {
        Some(v)
    } else if from < to {
        v.checked_mul(10i128.pow((to - from) as u32))
    } else {
        let p = 10i128.pow((from - to) as u32);
        (v % p == 0).then_some(v / p)
    }
}

/// An Arrow builder for one column type.
pub enum ColumnBuilder {
    Utf8(StringBuilder),
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    F64(Float64Builder),
    Ts(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Date(Date32Builder),
    Dec(Decimal128Builder, u8, i8),
}

impl ColumnBuilder {
    pub fn new(t: &DataType, n: usize) -> ColumnBuilder {
        match t {
            DataType::Boolean => ColumnBuilder::Bool(BooleanBuilder::with_capacity(n)),
            DataType::Int16 => ColumnBuilder::I16(Int16Builder::with_capacity(n)),
            DataType::Int32 => ColumnBuilder::I32(Int32Builder::with_capacity(n)),
            DataType::Int64 => ColumnBuilder::I64(Int64Builder::with_capacity(n)),
            DataType::UInt8 => ColumnBuilder::U8(UInt8Builder::with_capacity(n)),
            DataType::UInt16 => ColumnBuilder::U16(UInt16Builder::with_capacity(n)),
            DataType::UInt32 => ColumnBuilder::U32(UInt32Builder::with_capacity(n)),
            DataType::Float64 => ColumnBuilder::F64(Float64Builder::with_capacity(n)),
            DataType::Timestamp(_, tz) => {
                ColumnBuilder::Ts(TimestampMicrosecondBuilder::with_capacity(n), tz.clone())
            }
            DataType::Date32 => ColumnBuilder::Date(Date32Builder::with_capacity(n)),
            DataType::Decimal128(p, s) => {
                ColumnBuilder::Dec(Decimal128Builder::with_capacity(n), *p, *s)
            }
            _ => ColumnBuilder::Utf8(StringBuilder::with_capacity(n, n * 16)),
        }
    }

    pub fn push(&mut self, v: &Typed) {
        match (self, v) {
            (ColumnBuilder::Utf8(b), Typed::Str(s)) => b.append_value(s),
            (ColumnBuilder::Bool(b), Typed::Bool(x)) => b.append_value(*x),
            (ColumnBuilder::I16(b), Typed::Int(x)) => b.append_value(*x as i16),
            (ColumnBuilder::I32(b), Typed::Int(x)) => b.append_value(*x as i32),
            (ColumnBuilder::I64(b), Typed::Int(x)) => b.append_value(*x),
            (ColumnBuilder::U8(b), Typed::Int(x)) => b.append_value(*x as u8),
            (ColumnBuilder::U16(b), Typed::Int(x)) => b.append_value(*x as u16),
            (ColumnBuilder::U32(b), Typed::Int(x)) => b.append_value(*x as u32),
            (ColumnBuilder::F64(b), Typed::Float(x)) => b.append_value(*x),
            (ColumnBuilder::Ts(b, _), Typed::Micros(x)) => b.append_value(*x),
            (ColumnBuilder::Date(b), Typed::Days(x)) => b.append_value(*x),
            (ColumnBuilder::Dec(b, _, _), Typed::Dec(x)) => b.append_value(*x),
            (b, _) => b.push_null(),
        }
    }

    fn push_null(&mut self) {
        match self {
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::I16(b) => b.append_null(),
            ColumnBuilder::I32(b) => b.append_null(),
            ColumnBuilder::I64(b) => b.append_null(),
            ColumnBuilder::U8(b) => b.append_null(),
            ColumnBuilder::U16(b) => b.append_null(),
            ColumnBuilder::U32(b) => b.append_null(),
            ColumnBuilder::F64(b) => b.append_null(),
            ColumnBuilder::Ts(b, _) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Dec(b, _, _) => b.append_null(),
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::I16(b) => Arc::new(b.finish()),
            ColumnBuilder::I32(b) => Arc::new(b.finish()),
            ColumnBuilder::I64(b) => Arc::new(b.finish()),
            ColumnBuilder::U8(b) => Arc::new(b.finish()),
            ColumnBuilder::U16(b) => Arc::new(b.finish()),
            ColumnBuilder::U32(b) => Arc::new(b.finish()),
            ColumnBuilder::F64(b) => Arc::new(b.finish()),
            ColumnBuilder::Ts(b, tz) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Dec(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .expect("valid decimal"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rescales_decimals() {
        assert_eq!(parse_decimal("417021000000000"), Some((417021000000000, 0)));
        assert_eq!(parse_decimal("-12.50"), Some((-1250, 2)));
        assert_eq!(rescale(1250, 2, 2), Some(1250));
        assert_eq!(rescale(125, 1, 2), Some(1250));
        assert_eq!(rescale(1251, 3, 2), None);
        assert_eq!(parse_decimal("1,5"), None);
    }
}
