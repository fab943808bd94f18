//! A source value before it is typed: what a CSV field, a JSON value, a spreadsheet cell or a
//! database column gives the extractor, converted to the dataset column's Arrow type by
//! `convert`.

use bytestring::ByteString;
use chrono::{NaiveDate, NaiveDateTime};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    /// Text, owned or sharing the buffer it was read from (a database's wire messages): a
    /// load reads tens of millions of text values, and a copy of each would cost more than
    /// the rest of typing them.
    Text(ByteString),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A time without offset: local time of the project's zone (database `timestamp`).
    Local(NaiveDateTime),
    /// An instant, microseconds since the epoch, UTC (database `timestamptz`).
    Instant(i64),
    Date(NaiveDate),
    /// Unscaled value and scale (database NUMERIC).
    Decimal(i128, i8),
}

impl Cell {
    pub fn is_null(&self) -> bool {
        match self {
            Cell::Null => true,
            Cell::Text(s) => trimmed(s).is_empty(),
            _ => false,
        }
    }

    /// The value as text, for value mappings and for the quarantine's copy of the row.
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Text(s) => Some(s.to_string()),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(f) => Some(if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{}", *f as i64)
            } else {
                f.to_string()
            }),
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Local(t) => Some(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
            Cell::Instant(us) => {
                chrono::DateTime::from_timestamp_micros(*us).map(|t| t.to_rfc3339())
            }
            Cell::Date(d) => Some(d.to_string()),
            Cell::Decimal(v, s) => Some(decimal_text(*v, *s)),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Cell::Null => serde_json::Value::Null,
            Cell::Int(i) => (*i).into(),
            Cell::Float(f) => serde_json::Number::from_f64(*f)
                .map(Into::into)
                .unwrap_or(serde_json::Value::Null),
            Cell::Bool(b) => (*b).into(),
            other => other
                .text()
                .map(Into::into)
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Quoted in reasons: a value of megabytes is shown by its start.
        match self.text() {
            Some(t) => write!(f, "{:?}", super::file::clip(&t, 100)),
            None => f.write_str("null"),
        }
    }
}

/// `s` without surrounding whitespace. Most values have none: looking at the two end bytes
/// first is cheaper than `str::trim`, which decodes characters from both ends.
pub fn trimmed(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(a), Some(b)) if is_plain(*a) && is_plain(*b) => s,
        _ => s.trim(),
    }
}

/// An ASCII byte that is not whitespace (a byte of a multi-byte character may belong to
/// Unicode whitespace, so it is not plain).
fn is_plain(b: u8) -> bool {
    b.is_ascii() && !b.is_ascii_whitespace()
}

/// An unscaled value and its scale as decimal text (`-12.50`), for any scale: built from the
/// digits, as 10^scale may not fit an i128.
pub fn decimal_text(v: i128, scale: i8) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let digits = v.unsigned_abs().to_string();
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    if scale < 0 {
        return format!("{sign}{digits}{}", "0".repeat(-(scale as i32) as usize));
    }
    let s = scale as usize;
    let padded = if digits.len() <= s {
        format!("{}{digits}", "0".repeat(s + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - s);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_text_at_any_scale() {
        assert_eq!(decimal_text(-1250, 2), "-12.50");
        assert_eq!(decimal_text(5, 3), "0.005");
        assert_eq!(decimal_text(-5, 1), "-0.5");
        assert_eq!(decimal_text(0, 4), "0.0000");
        assert_eq!(decimal_text(12, -3), "12000");
        assert_eq!(decimal_text(7, 0), "7");
        // Scales whose power of ten overflows an i128.
        assert_eq!(decimal_text(1, 100), format!("0.{}1", "0".repeat(99)));
        assert_eq!(decimal_text(i128::MIN, -128).len(), 1 + 39 + 128);
    }
}
