//! Typing one row: each source cell becomes the dataset column's Arrow value, after the
//! pipeline's value mapping and time format, with every reason a row is invalid collected
//! (types, nulls, allowed values), and personal data hashed or dropped on the way.

use arrow::array::*;
use arrow::datatypes::{DataType, Schema as ArrowSchema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::cell::{trimmed, Cell};
use super::file::clip;
use super::pii::Hasher;
use crate::config::pipeline::ExtractJob;
use crate::config::schema::{AllowedValue, Granularity, Personal, Schema};

/// A typed value of one column of one row. Text borrows from the source cell where it can:
/// a load of millions of rows would otherwise copy every string once more.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed<'a> {
    Null,
    Str(Cow<'a, str>),
    /// An HMAC-SHA256 digest, stored as lower-case hex.
    Digest([u8; 32]),
    /// A derived partition value: `YYYY-MM`, or `YYYY` when the month is `None`.
    Period(i32, Option<u32>),
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Microseconds since the epoch, UTC.
    Micros(i64),
    Days(i32),
    Dec(i128),
}

impl Typed<'_> {
    fn into_owned(self) -> Typed<'static> {
        match self {
            Typed::Str(s) => Typed::Str(Cow::Owned(s.into_owned())),
            Typed::Null => Typed::Null,
            Typed::Digest(d) => Typed::Digest(d),
            Typed::Period(y, m) => Typed::Period(y, m),
            Typed::Bool(b) => Typed::Bool(b),
            Typed::Int(i) => Typed::Int(i),
            Typed::Float(f) => Typed::Float(f),
            Typed::Micros(u) => Typed::Micros(u),
            Typed::Days(d) => Typed::Days(d),
            Typed::Dec(d) => Typed::Dec(d),
        }
    }
}

/// Space for one row's typed values, kept from row to row so that typing a row allocates
/// nothing of its own.
#[derive(Default)]
pub struct Scratch(Vec<Typed<'static>>);

/// An empty vector with `v`'s allocation, for values of another lifetime (the collect is done
/// in place, as the element types have the same layout).
fn recycle<'b>(mut v: Vec<Typed<'_>>) -> Vec<Typed<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
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
    offsets: RefCell<OffsetCache>,
}

/// The zone's UTC offset by local day, for days without a transition: converting a local time
/// through the zone's rules costs more than the rest of typing a timestamp, and a load
/// converts several per row.
struct OffsetCache {
    /// Direct-mapped by day number: (day, offset in seconds).
    slots: Vec<(i64, i32)>,
}

const OFFSET_SLOTS: usize = 4096;

impl OffsetCache {
    fn new() -> Self {
        OffsetCache {
            slots: vec![(i64::MIN, 0); OFFSET_SLOTS],
        }
    }
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
            offsets: RefCell::new(OffsetCache::new()),
        }
    }

    /// Types one row and appends it to `builders`; an invalid row is not appended and `Err`
    /// holds every reason it is invalid.
    pub fn append_row(
        &self,
        cells: &[Cell],
        builders: &mut [ColumnBuilder],
        scratch: &mut Scratch,
    ) -> Result<(), Vec<String>> {
        let mut typed = recycle(std::mem::take(&mut scratch.0));
        let result = self.type_row(cells, &mut typed);
        if result.is_ok() {
            for (b, v) in builders.iter_mut().zip(&typed) {
                b.push(v);
            }
        }
        scratch.0 = recycle(typed);
        result
    }

    /// Types one row. `Err` holds every reason the row is invalid.
    pub fn type_row<'a>(
        &'a self,
        cells: &'a [Cell],
        out: &mut Vec<Typed<'a>>,
    ) -> Result<(), Vec<String>> {
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
            let date = match &out[*i] {
                Typed::Micros(us) => DateTime::from_timestamp_micros(*us)
                    .map(|t| t.with_timezone(&self.tz).date_naive()),
                Typed::Days(d) => NaiveDate::from_num_days_from_ce_opt(*d + 719_163),
                _ => None,
            };
            out.push(match (date, g) {
                (Some(t), Granularity::Month) => Typed::Period(t.year(), Some(t.month())),
                (Some(t), Granularity::Year) => Typed::Period(t.year(), None),
                (None, _) => Typed::Null,
            });
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn type_cell<'a>(&'a self, c: &'a ColumnPlan, cell: &'a Cell) -> Result<Typed<'a>, String> {
        // Value mapping first: it works on the source's text.
        if let Some(map) = &c.values {
            if let Some(t) = cell.text() {
                let mapped = match map.get(t.trim()) {
                    Some(toml::Value::String(s)) => Cell::Text(s.as_str().into()),
                    Some(toml::Value::Integer(i)) => Cell::Int(*i),
                    Some(toml::Value::Boolean(b)) => Cell::Bool(*b),
                    Some(other) => return Err(format!("mapping gives unsupported value {other}")),
                    None => {
                        return Err(format!(
                            "value {:?} has no mapping in the pipeline's [values.{}]",
                            clip(&t, 100),
                            c.name
                        ))
                    }
                };
                return self.type_value(c, &mapped).map(Typed::into_owned);
            }
        }
        self.type_value(c, cell)
    }

    /// Types a cell after value mapping: nulls, personal data, the type, allowed values.
    fn type_value<'a>(&'a self, c: &ColumnPlan, cell: &'a Cell) -> Result<Typed<'a>, String> {
        if cell.is_null() {
            return if c.nullable {
                Ok(Typed::Null)
            } else {
                Err("missing (the column is not nullable)".into())
            };
        }
        if let (Some(Personal::Hash), Some(h)) = (c.personal, &self.hasher) {
            return Ok(Typed::Digest(match cell {
                Cell::Text(s) => h.digest(trimmed(s)),
                other => h.digest(other.text().unwrap_or_default().trim()),
            }));
        }
        let v = self.typed(c, cell)?;
        if let Some(allowed) = &c.allowed {
            let ok = match &v {
                Typed::Int(i) => allowed.contains(&AllowedValue::Int(*i)),
                Typed::Str(s) => allowed
                    .iter()
                    .any(|a| matches!(a, AllowedValue::Text(t) if t == s)),
                _ => true,
            };
            if !ok {
                return Err(format!("{cell} is not an allowed value"));
            }
        }
        Ok(v)
    }

    fn typed<'a>(&self, c: &ColumnPlan, cell: &'a Cell) -> Result<Typed<'a>, String> {
        let bad = || format!("cannot read {cell} as {}", c.data_type);
        match &c.data_type {
            DataType::Utf8 => Ok(Typed::Str(match cell {
                Cell::Text(s) => Cow::Borrowed(trimmed(s)),
                other => Cow::Owned(other.text().unwrap_or_default()),
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
            t if t.is_integer() => typed_int(t, cell),
            DataType::Float64 => match cell {
                Cell::Float(f) => Ok(Typed::Float(*f)),
                Cell::Int(i) => Ok(Typed::Float(*i as f64)),
                Cell::Decimal(v, s) => Ok(Typed::Float(*v as f64 / 10f64.powi(*s as i32))),
                Cell::Text(s) => s.trim().parse::<f64>().map(Typed::Float).map_err(|_| bad()),
                _ => Err(bad()),
            },
            DataType::Decimal128(precision, scale) => typed_decimal(c, *precision, *scale, cell),
            DataType::Date32 => typed_date(c, cell),
            DataType::Timestamp(TimeUnit::Microsecond, _) => self.typed_time(c, cell),
            other => Err(format!("unsupported column type {other}")),
        }
    }

    /// A timestamp column's value as a UTC instant in microseconds.
    fn typed_time<'a>(&self, c: &ColumnPlan, cell: &'a Cell) -> Result<Typed<'a>, String> {
        let bad = || format!("cannot read {cell} as {}", c.data_type);
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

    /// A local time of the project's zone as a UTC instant (the earlier one when the local
    /// time occurs twice).
    fn local_micros(&self, t: NaiveDateTime) -> Option<i64> {
        // Far from today the zone's rules are guesses, and near chrono's bounds its offset
        // arithmetic overflows.
        if !sane_year(t.year()) {
            return None;
        }
        let local = t.and_utc().timestamp_micros();
        let day = local.div_euclid(86_400_000_000);
        let slot = day.rem_euclid(OFFSET_SLOTS as i64) as usize;
        let cached = self.offsets.borrow().slots[slot];
        if cached.0 == day {
            return Some(local - cached.1 as i64 * 1_000_000);
        }
        let utc = self
            .tz
            .from_local_datetime(&t)
            .earliest()
            .map(|t| t.timestamp_micros())?;
        // Cache the day's offset only when the day has one: the same offset, unambiguous, at
        // its first and last second.
        let offset_at = |n: NaiveDateTime| match self.tz.offset_from_local_datetime(&n) {
            chrono::LocalResult::Single(o) => Some(o.fix().local_minus_utc()),
            _ => None,
        };
        let start = t.date().and_hms_opt(0, 0, 0).expect("midnight");
        let end = t.date().and_hms_opt(23, 59, 59).expect("last second");
        if let (Some(a), Some(b)) = (offset_at(start), offset_at(end)) {
            if a == b {
                self.offsets.borrow_mut().slots[slot] = (day, a);
            }
        }
        Some(utc)
    }

    /// Times with an explicit offset keep it; times without one are local.
    fn parse_time(&self, s: &str, format: Option<&str>) -> Result<i64, String> {
        if let Some(f) = format {
            if let Ok(t) = DateTime::parse_from_str(s, f) {
                return sane_instant(t);
            }
            let t = NaiveDateTime::parse_from_str(s, f)
                .map_err(|e| format!("does not match format {f:?}: {e}"))?;
            return self.local_micros(t).ok_or_else(|| not_local(t));
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return sane_instant(t);
        }
        for f in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y%m%d%H%M%S",
        ] {
            if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
                return self.local_micros(t).ok_or_else(|| not_local(t));
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

    /// The row with personal data hashed or left out, for the quarantine. With `all_hashed`
    /// (a misshapen row, whose cells may sit in the wrong columns and so hold personal text
    /// anywhere) every kept cell is hashed, or left out where the schema needs no key.
    pub fn safe_json(
        &self,
        names: &[String],
        cells: &[Cell],
        personal: &BTreeMap<String, Personal>,
        all_hashed: bool,
    ) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (n, c) in names.iter().zip(cells) {
            let v = match (personal.get(n), all_hashed) {
                (Some(Personal::Drop), _) => continue,
                (Some(Personal::Hash), _) | (None, true) => match (c.text(), &self.hasher) {
                    (Some(t), Some(h)) => serde_json::Value::String(h.hash(t.trim())),
                    _ => serde_json::Value::Null,
                },
                (None, false) => c.to_json(),
            };
            m.insert(n.clone(), v);
        }
        serde_json::Value::Object(m)
    }
}

/// The bound of an i64 as a float (2^63): `as` saturates beyond it.
const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;

const OUT_OF_YEARS: &str = "out of range: the year must be between 1 and 9999";

fn sane_year(y: i32) -> bool {
    (1..=9999).contains(&y)
}

/// An integer column's value, within the range of its type.
fn typed_int<'a>(t: &DataType, cell: &'a Cell) -> Result<Typed<'a>, String> {
    let bad = || format!("cannot read {cell} as {t}");
    let out_of_range = || format!("{cell} is out of range for {t}");
    let i = match cell {
        Cell::Int(i) => *i,
        // `as` would saturate: 1e300 is no i64::MAX.
        Cell::Float(f) if f.fract() == 0.0 => {
            if (-I64_BOUND..I64_BOUND).contains(f) {
                *f as i64
            } else {
                return Err(out_of_range());
            }
        }
        Cell::Text(s) => match s.trim().parse::<i64>() {
            Ok(i) => i,
            Err(e)
                if matches!(
                    e.kind(),
                    std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
                ) =>
            {
                return Err(out_of_range())
            }
            Err(_) => return Err(bad()),
        },
        Cell::Decimal(v, s) => {
            let whole = rescale(*v, *s, 0).ok_or_else(bad)?;
            i64::try_from(whole).map_err(|_| out_of_range())?
        }
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

/// A decimal column's value at the column's scale, within its precision.
fn typed_decimal<'a>(
    c: &ColumnPlan,
    precision: u8,
    scale: i8,
    cell: &'a Cell,
) -> Result<Typed<'a>, String> {
    let bad = || format!("cannot read {cell} as {}", c.data_type);
    let (precision, scale) = (&precision, &scale);
    let t = &c.data_type;
    let out_of_range = || {
        format!(
            "{cell} is out of range for {t}: at most {} digits before the decimal point",
            *precision as i32 - *scale as i32
        )
    };
    let (v, s) = match cell {
        Cell::Decimal(v, s) => (*v, *s),
        Cell::Int(i) => (*i as i128, 0),
        Cell::Text(x) => match parse_decimal(x.trim()) {
            Ok(d) => d,
            Err(DecimalError::TooLong) => return Err(out_of_range()),
            Err(DecimalError::NotANumber) => return Err(bad()),
        },
        Cell::Float(f) => {
            let scaled = (f * 10f64.powi(*scale as i32)).round();
            // `as` would saturate (and make 0 of NaN).
            if !(scaled.is_finite() && scaled.abs() < 1e38) {
                return Err(out_of_range());
            }
            (scaled as i128, *scale)
        }
        _ => return Err(bad()),
    };
    let v = rescale(v, s, *scale).ok_or_else(|| {
        if s > *scale {
            format!("{cell} has more decimals than {scale}")
        } else {
            out_of_range()
        }
    })?;
    // A value past the column's precision is refused here rather than by the
    // table's writer, which would fail the whole commit.
    match 10i128.checked_pow(*precision as u32) {
        Some(bound) if v.unsigned_abs() >= bound as u128 => Err(out_of_range()),
        _ => Ok(Typed::Dec(v)),
    }
}

/// A date column's value as days since 1970-01-01.
fn typed_date<'a>(c: &ColumnPlan, cell: &'a Cell) -> Result<Typed<'a>, String> {
    let bad = || format!("cannot read {cell} as {}", c.data_type);
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
    if !sane_year(d.year()) {
        return Err(format!("{cell}: {OUT_OF_YEARS}"));
    }
    Ok(Typed::Days(d.num_days_from_ce() - 719_163))
}

fn sane_instant(t: DateTime<chrono::FixedOffset>) -> Result<i64, String> {
    if sane_year(t.naive_utc().year()) {
        Ok(t.timestamp_micros())
    } else {
        Err(OUT_OF_YEARS.into())
    }
}

/// Why a local time has no instant: out of the years kept, or skipped by a clock change.
fn not_local(t: NaiveDateTime) -> String {
    if sane_year(t.year()) {
        "not a valid local time".into()
    } else {
        OUT_OF_YEARS.into()
    }
}

#[derive(Debug, PartialEq)]
enum DecimalError {
    NotANumber,
    /// More digits than a 128-bit decimal holds.
    TooLong,
}

/// `[+-]digits[.digits]` as an unscaled value and its scale, without trailing zeros of the
/// fraction (they change neither the value nor whether it fits).
fn parse_decimal(s: &str) -> Result<(i128, i8), DecimalError> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
    {
        return Err(DecimalError::NotANumber);
    }
    let frac = frac.trim_end_matches('0');
    let scale = i8::try_from(frac.len()).map_err(|_| DecimalError::TooLong)?;
    let mut v: i128 = 0;
    for d in int.bytes().chain(frac.bytes()) {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add((d - b'0') as i128))
            .ok_or(DecimalError::TooLong)?;
    }
    Ok((if neg { -v } else { v }, scale))
}

/// `v` at scale `from` as the same value at scale `to`; `None` when it does not fit or would
/// lose digits.
fn rescale(v: i128, from: i8, to: i8) -> Option<i128> {
    let diff = to as i32 - from as i32;
    if diff == 0 {
        Some(v)
    } else if diff > 0 {
        10i128
            .checked_pow(diff as u32)
            .and_then(|p| v.checked_mul(p))
    } else {
        match 10i128.checked_pow((-diff) as u32) {
            Some(p) => (v % p == 0).then_some(v / p),
            // No i128 is a multiple of 10^39 but 0.
            None => (v == 0).then_some(0),
        }
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
            (ColumnBuilder::Utf8(b), Typed::Digest(d)) => {
                let mut hex = [0u8; 64];
                hex::encode_to_slice(d, &mut hex).expect("64 bytes for 32");
                b.append_value(std::str::from_utf8(&hex).expect("hex is ASCII"));
            }
            (ColumnBuilder::Utf8(b), Typed::Period(y, m)) => {
                use std::fmt::Write;
                // The builder takes formatted text directly; `append_value("")` ends the value.
                let _ = match m {
                    Some(m) => write!(b, "{y:04}-{m:02}"),
                    None => write!(b, "{y:04}"),
                };
                b.append_value("");
            }
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
    use crate::config::diag::{Diagnostics, Source};

    fn events_plan(tz: chrono_tz::Tz) -> RowPlan {
        let text = r#"
name = "events"
label = "Sự kiện"
primary_key = ["id"]
partition = { column = "at_month", from = "at", granularity = "month" }
[[columns]]
name = "id"
type = "Int64"
nullable = false
label = "Mã"
[[columns]]
name = "at"
type = "Timestamp"
nullable = false
label = "Thời điểm"
"#;
        let mut d = Diagnostics::default();
        let schema =
            crate::config::schema::load(&Source::new("events.toml", text.into()), "events", &mut d);
        let schema = schema.unwrap_or_else(|| {
            panic!(
                "{:?}",
                d.sorted().iter().map(|d| d.to_string()).collect::<Vec<_>>()
            )
        });
        RowPlan::plain(&schema, &["id".into(), "at".into()], tz)
    }

    #[test]
    fn local_times_convert_as_the_zone_says_around_its_transitions() {
        // Berlin has two transitions a year; the day cache must give what chrono-tz gives for
        // every hour of those days and of ordinary ones, asked in any order.
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let plan = events_plan(tz);
        let mut times = Vec::new();
        for day in [
            "2024-03-30",
            "2024-03-31",
            "2024-04-01",
            "2024-10-26",
            "2024-10-27",
            "2024-10-28",
        ] {
            let d = NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
            for minutes in (0..24 * 60).step_by(30) {
                times.push(d.and_hms_opt(0, 0, 0).unwrap() + chrono::Duration::minutes(minutes));
            }
        }
        for pass in 0..2 {
            for t in &times {
                let expected = tz
                    .from_local_datetime(t)
                    .earliest()
                    .map(|t| t.timestamp_micros());
                assert_eq!(plan.local_micros(*t), expected, "{t} (pass {pass})");
            }
        }
    }

    #[test]
    fn the_partition_month_is_the_local_month() {
        let tz: chrono_tz::Tz = "Asia/Ho_Chi_Minh".parse().unwrap();
        let plan = events_plan(tz);
        let mut builders = plan.builders(3);
        let mut scratch = Scratch::default();
        // 16:59:59Z on 31 Oct is 23:59:59 local; 17:00Z is midnight of 1 Nov, local.
        for at in [
            "2025-10-31T16:59:59Z",
            "2025-10-31T17:00:00Z",
            "2025-11-01 00:00:00",
        ] {
            plan.append_row(
                &[Cell::Int(1), Cell::Text(at.into())],
                &mut builders,
                &mut scratch,
            )
            .unwrap();
        }
        let batch = plan.finish(&mut builders).unwrap();
        let months = batch
            .column_by_name("at_month")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .iter()
            .map(|m| m.unwrap().to_string())
            .collect::<Vec<_>>();
        assert_eq!(months, ["2025-10", "2025-11", "2025-11"]);
    }

    #[test]
    fn parses_and_rescales_decimals() {
        assert_eq!(parse_decimal("417021000000000"), Ok((417021000000000, 0)));
        assert_eq!(parse_decimal("-12.50"), Ok((-125, 1)));
        assert_eq!(rescale(1250, 2, 2), Some(1250));
        assert_eq!(rescale(125, 1, 2), Some(1250));
        assert_eq!(rescale(1251, 3, 2), None);
        assert_eq!(parse_decimal("1,5"), Err(DecimalError::NotANumber));
        assert_eq!(parse_decimal(&"9".repeat(200)), Err(DecimalError::TooLong));
        assert_eq!(
            parse_decimal(&format!("1.5{}", "0".repeat(200))),
            Ok((15, 1))
        );
        assert_eq!(rescale(5, -128, 127), None);
        assert_eq!(rescale(5, 127, -128), None);
        assert_eq!(rescale(0, 127, -128), Some(0));
    }

    /// Every type a column can have, some with a time format, for the property tests.
    fn every_type_plan() -> RowPlan {
        let types = [
            ("k", "Utf8"),
            ("s", "Utf8"),
            ("b", "Boolean"),
            ("i16", "Int16"),
            ("i32", "Int32"),
            ("i64", "Int64"),
            ("u8", "UInt8"),
            ("u16", "UInt16"),
            ("u32", "UInt32"),
            ("f", "Float64"),
            ("d20", "Decimal128(20,0)"),
            ("d18", "Decimal128(18,2)"),
            ("d38", "Decimal128(38,10)"),
            ("day", "Date32"),
            ("dayf", "Date32"),
            ("at", "Timestamp"),
            ("atf", "Timestamp"),
        ];
        let mut text = String::from("name = \"every\"\nlabel = \"x\"\nprimary_key = [\"k\"]\n");
        for (n, t) in types {
            text.push_str(&format!(
                "[[columns]]\nname = \"{n}\"\ntype = \"{t}\"\nnullable = {}\nlabel = \"x\"\n",
                n != "k"
            ));
        }
        let mut d = Diagnostics::default();
        let schema = crate::config::schema::load(&Source::new("every.toml", text), "every", &mut d)
            .unwrap_or_else(|| panic!("{:?}", d.sorted()));
        let formats: BTreeMap<String, String> = [
            ("dayf".to_string(), "%Y%m%d".to_string()),
            ("atf".to_string(), "%Y%m%d%H%M%S".to_string()),
        ]
        .into();
        let names: Vec<String> = types.iter().map(|(n, _)| n.to_string()).collect();
        RowPlan::with_maps(
            &schema,
            &formats,
            &BTreeMap::new(),
            &names,
            "Asia/Ho_Chi_Minh".parse().unwrap(),
            None,
        )
    }

    fn any_cell() -> impl proptest::strategy::Strategy<Value = Cell> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Cell::Null),
            any::<String>().prop_map(|s| Cell::Text(s.into())),
            // Text that looks like numbers and dates, long and short, signed, with a point.
            "[+-]?[0-9]{0,60}(\\.[0-9]{0,60})?".prop_map(|s| Cell::Text(s.into())),
            "[0-9]{1,20}[-/T: ]?[0-9]{0,20}".prop_map(|s| Cell::Text(s.into())),
            any::<i64>().prop_map(Cell::Int),
            any::<f64>().prop_map(Cell::Float),
            prop_oneof![
                Just(1e300),
                Just(-1e300),
                Just(9.3e18),
                Just(99999999.0),
                Just(f64::NAN),
                Just(f64::INFINITY)
            ]
            .prop_map(Cell::Float),
            any::<bool>().prop_map(Cell::Bool),
            any::<i64>().prop_map(|us| Cell::Local(
                DateTime::from_timestamp_micros(us / 4)
                    .map(|t| t.naive_utc())
                    .unwrap_or_default()
            )),
            any::<i64>().prop_map(Cell::Instant),
            any::<i32>().prop_map(|d| Cell::Date(
                NaiveDate::from_num_days_from_ce_opt(d % 95_000_000).unwrap_or_default()
            )),
            (any::<i128>(), any::<i8>()).prop_map(|(v, s)| Cell::Decimal(v, s)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
        ))]

        /// Any cell in any column: a typed value or reasons, never a panic; what is kept makes
        /// a valid batch whose decimals fit their precision.
        #[test]
        fn any_cell_types_or_gives_reasons(cells in proptest::collection::vec(any_cell(), 16)) {
            let plan = every_type_plan();
            let mut builders = plan.builders(16);
            let mut scratch = Scratch::default();
            for c in &cells {
                // Shown in reasons and the quarantine's copy: total for any cell.
                let _ = (c.text(), c.to_json(), c.to_string());
            }
            // Each cell alone in its column, so one bad cell does not hide the others.
            for (i, cell) in cells.iter().enumerate() {
                let mut row = vec![Cell::Null; 17];
                row[0] = Cell::Text("key".into());
                row[i + 1] = cell.clone();
                if let Err(reasons) = plan.append_row(&row, &mut builders, &mut scratch) {
                    proptest::prop_assert!(!reasons.is_empty());
                    proptest::prop_assert!(reasons.iter().all(|r| r.len() < 600), "{reasons:?}");
                }
            }
            let batch = plan.finish(&mut builders).unwrap();
            for col in batch.columns() {
                if let Some(d) = col.as_any().downcast_ref::<Decimal128Array>() {
                    proptest::prop_assert!(d.validate_decimal_precision(d.precision()).is_ok());
                }
            }
        }

        #[test]
        fn decimal_text_reads_back(v in proptest::prelude::any::<i128>(), s in 0i8..=38) {
            let t = super::super::cell::decimal_text(v, s);
            let (back, scale) = parse_decimal(&t).unwrap();
            proptest::prop_assert_eq!(rescale(back, scale, s), Some(v));
        }
    }

    #[test]
    fn hostile_values_are_reasons() {
        let plan = every_type_plan();
        let idx = |n: &str| plan.columns.iter().position(|c| c.name == n).unwrap();
        let reason = |col: &str, cell: Cell| {
            let mut row = vec![Cell::Null; 17];
            row[0] = Cell::Text("key".into());
            row[idx(col)] = cell;
            plan.type_row(&row, &mut Vec::new()).unwrap_err().join("; ")
        };
        let digits = "7".repeat(200);
        assert!(reason("d20", Cell::Text(digits.as_str().into()))
            .contains("out of range for Decimal128(20, 0)"));
        assert!(reason("d18", Cell::Float(1e200)).contains("out of range"));
        assert!(
            reason("d20", Cell::Text("123456789012345678901".into())).contains("at most 20 digits")
        );
        assert!(reason("i64", Cell::Float(1e300)).contains("out of range for Int64"));
        assert!(reason("i64", Cell::Text("9223372036854775808".into()))
            .contains("out of range for Int64"));
        assert!(reason("i64", Cell::Decimal(i64::MAX as i128 + 1, 0)).contains("out of range"));
        assert!(reason("dayf", Cell::Text("99999999".into())).contains("does not match format"));
        assert!(
            reason("atf", Cell::Text("99999999999999".into())).contains("does not match format")
        );
        assert!(reason("at", Cell::Text("+99999-01-01T00:00:00Z".into())).contains("not a time"));
        let far = NaiveDate::from_ymd_opt(200_000, 1, 1).unwrap();
        assert!(reason("day", Cell::Date(far)).contains("year must be between 1 and 9999"));
        assert!(
            reason("at", Cell::Local(far.and_hms_opt(0, 0, 0).unwrap())).contains("cannot read")
        );
        // A long value is quoted by its start only.
        assert!(reason("d20", Cell::Text(digits.as_str().into())).len() < 300);
    }
}
