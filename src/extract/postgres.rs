//! PostgreSQL source: the job's query streamed with `COPY (query) TO STDOUT (FORMAT binary)`
//! and the binary tuples decoded straight into cells, never through a row-by-row text path.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime};
use futures_util::StreamExt;
use tokio_postgres::types::Type;

use super::cell::Cell;
use super::source::Reading;
use super::{ExtractError, Position, RawRow, RowSink, Timeouts};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

fn pg_epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .expect("valid")
        .and_hms_opt(0, 0, 0)
        .expect("valid")
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, Clone, Copy)]
enum Decode {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Timestamp,
    TimestampTz,
    Date,
    Numeric,
}

fn decoder(t: &Type) -> Option<Decode> {
    Some(match *t {
        Type::BOOL => Decode::Bool,
        Type::INT2 => Decode::Int2,
        Type::INT4 => Decode::Int4,
        Type::INT8 => Decode::Int8,
        Type::FLOAT4 => Decode::Float4,
        Type::FLOAT8 => Decode::Float8,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Decode::Text,
        Type::TIMESTAMP => Decode::Timestamp,
        Type::TIMESTAMPTZ => Decode::TimestampTz,
        Type::DATE => Decode::Date,
        Type::NUMERIC => Decode::Numeric,
        _ => return None,
    })
}

/// Decodes one value; text keeps sharing the message it arrived in.
fn decode(d: Decode, value: Bytes) -> Result<Cell, String> {
    if let Decode::Text = d {
        return ByteString::try_from(value)
            .map(Cell::Text)
            .map_err(|e| format!("invalid UTF-8: {e}"));
    }
    let mut b: &[u8] = &value;
    let need = |n: usize, b: &[u8]| {
        if b.len() < n {
            Err(format!("truncated value ({} bytes)", b.len()))
        } else {
            Ok(())
        }
    };
    Ok(match d {
        Decode::Bool => {
            need(1, b)?;
            Cell::Bool(b[0] != 0)
        }
        Decode::Int2 => {
            need(2, b)?;
            Cell::Int(b.get_i16() as i64)
        }
        Decode::Int4 => {
            need(4, b)?;
            Cell::Int(b.get_i32() as i64)
        }
        Decode::Int8 => {
            need(8, b)?;
            Cell::Int(b.get_i64())
        }
        Decode::Float4 => {
            need(4, b)?;
            Cell::Float(b.get_f32() as f64)
        }
        Decode::Float8 => {
            need(8, b)?;
            Cell::Float(b.get_f64())
        }
        Decode::Text => unreachable!("decoded above"),
        // 'infinity' and '-infinity' are the extreme values: out of range, as is anything
        // chrono cannot hold.
        Decode::Timestamp => {
            need(8, b)?;
            let t = b
                .get_i64()
                .checked_add(PG_EPOCH_MICROS)
                .and_then(DateTime::from_timestamp_micros)
                .ok_or("timestamp out of range (infinity?)")?;
            Cell::Local(t.naive_utc())
        }
        Decode::TimestampTz => {
            need(8, b)?;
            Cell::Instant(
                b.get_i64()
                    .checked_add(PG_EPOCH_MICROS)
                    .filter(|t| DateTime::from_timestamp_micros(*t).is_some())
                    .ok_or("timestamp out of range (infinity?)")?,
            )
        }
        Decode::Date => {
            need(4, b)?;
            Cell::Date(
                pg_epoch()
                    .date()
                    .checked_add_signed(Duration::days(b.get_i32() as i64))
                    .ok_or("date out of range (infinity?)")?,
            )
        }
        Decode::Numeric => decode_numeric(b)?,
    })
}

/// NUMERIC's binary form: digit count, weight, sign, display scale, then base-10000 digits.
fn decode_numeric(mut b: &[u8]) -> Result<Cell, String> {
    if b.len() < 8 {
        return Err("truncated numeric".into());
    }
    let ndigits = b.get_i16() as usize;
    let weight = b.get_i16() as i32;
    let sign = b.get_u16();
    let dscale = b.get_u16() as i32;
    if sign == 0xC000 {
        return Err("NaN is not a number the warehouse stores".into());
    }
    if b.len() < ndigits * 2 {
        return Err("truncated numeric".into());
    }
    // value = sum(d_i * 10000^(weight - i)); scaled by 10^dscale.
    let mut v: i128 = 0;
    let mut exp10 = 0i32; // power of ten of the last digit group appended
    for i in 0..ndigits {
        let d = b.get_i16() as i128;
        v = v
            .checked_mul(10_000)
            .and_then(|x| x.checked_add(d))
            .ok_or("numeric too large")?;
        exp10 = (weight - i as i32) * 4;
    }
    if ndigits == 0 {
        return Ok(Cell::Decimal(0, dscale as i8));
    }
    // Bring to scale dscale: value = v * 10^exp10, want v' * 10^-dscale.
    let shift = exp10 + dscale;
    let v = if shift >= 0 {
        v.checked_mul(10i128.pow(shift as u32))
            .ok_or("numeric too large")?
    } else {
        v / 10i128.pow((-shift) as u32)
    };
    Ok(Cell::Decimal(
        if sign == 0x4000 { -v } else { v },
        dscale as i8,
    ))
}

/// A pipeline's query on a PostgreSQL connection, its `$watermark` already bound.
pub(crate) struct Query {
    /// The connection URL: a secret (it may hold the password), never logged.
    pub url: String,
    pub query: String,
    /// Personal columns the dataset never stores.
    pub dropped: Vec<String>,
    /// The project's zone, for the session.
    pub timezone: String,
    pub limits: Timeouts,
}

#[async_trait::async_trait]
impl Reading for Query {
    async fn read(&self, sink: &mut RowSink) -> Result<(), ExtractError> {
        let q = self;
        stream(&q.url, &q.query, &q.dropped, &q.timezone, &q.limits, sink).await
    }
}

/// Streams `query`'s rows into `sink`, its column names first. The `dropped` columns (personal
/// data the dataset never stores) arrive as NULL, not even decoded.
pub(crate) async fn stream(
    url: &str,
    query: &str,
    dropped: &[String],
    timezone: &str,
    limits: &Timeouts,
    sink: &mut RowSink,
) -> Result<(), ExtractError> {
    let mut names = Vec::new();
    let pg = super::tls::postgres(url).map_err(ExtractError::Config)?;
    let (client, conn) = limits
        .connect("PostgreSQL", pg.connect())
        .await?
        .map_err(ExtractError::connect)?;
    let task = tokio::spawn(conn);
    // Casts and date functions in the query see the project's zone, whatever the server's
    // or the role's default.
    limits
        .read(
            "PostgreSQL",
            client.batch_execute(&format!("SET TIME ZONE '{}'", timezone.replace('\'', ""))),
        )
        .await?
        .map_err(|e| {
            ExtractError::peer(
                format!("cannot set the session's TimeZone to {timezone}"),
                e,
            )
        })?;
    let stmt = limits
        .read("PostgreSQL", client.prepare(query))
        .await?
        .map_err(|e| ExtractError::peer("the pipeline's query does not prepare", e))?;
    let mut decoders = Vec::new();
    for c in stmt.columns() {
        names.push(c.name().to_string());
        if dropped.iter().any(|d| d == c.name()) {
            decoders.push(None);
            continue;
        }
        decoders.push(Some(decoder(c.type_()).ok_or_else(|| {
            ExtractError::Source(format!("column `{}` has type {} that parstat does not read; cast it in the query, e.g. `{}::text`", c.name(), c.type_(), c.name()))
        })?));
    }
    sink.columns(names.clone()).await?;
    let copy = format!("COPY ({query}) TO STDOUT (FORMAT binary)");
    let stream = limits
        .read("PostgreSQL", client.copy_out(copy.as_str()))
        .await?
        .map_err(|e| ExtractError::peer("COPY failed", e))?;
    futures_util::pin_mut!(stream);
    let mut copy = CopyDecoder::new(decoders, names);
    let mut rows = Vec::new();
    while let Some(chunk) = limits.read("PostgreSQL", stream.next()).await? {
        let chunk = chunk.map_err(|e| {
            ExtractError::peer(format!("COPY stream failed after {} rows", copy.rows), e)
        })?;
        sink.count_bytes(chunk.len() as u64);
        copy.feed(chunk, &mut rows)?;
        for r in rows.drain(..) {
            sink.push(r).await?;
        }
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// The binary COPY format, decoded message by message: the header once, then the tuples.
/// PostgreSQL sends one message per tuple, so a tuple is decoded from the message it arrived
/// in; a tuple split across messages waits in a small buffer for the rest.
struct CopyDecoder {
    /// Per column; `None` for a column that is skipped.
    decoders: Vec<Option<Decode>>,
    names: Vec<String>,
    partial: BytesMut,
    header_done: bool,
    /// Tuples decoded so far.
    rows: u64,
}

impl CopyDecoder {
    fn new(decoders: Vec<Option<Decode>>, names: Vec<String>) -> Self {
        CopyDecoder {
            decoders,
            names,
            partial: BytesMut::new(),
            header_done: false,
            rows: 0,
        }
    }

    /// Decodes the complete tuples that `chunk` ends, into `out`.
    fn feed(&mut self, chunk: Bytes, out: &mut Vec<RawRow>) -> Result<(), ExtractError> {
        let mut data = if self.partial.is_empty() {
            chunk
        } else {
            self.partial.extend_from_slice(&chunk);
            self.partial.split().freeze()
        };
        if !self.header_done {
            if data.len() < SIGNATURE.len() + 8 {
                self.partial.extend_from_slice(&data);
                return Ok(());
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(ExtractError::Source(
                    "COPY did not return the binary format".into(),
                ));
            }
            let ext = u32::from_be_bytes(
                data[SIGNATURE.len() + 4..SIGNATURE.len() + 8]
                    .try_into()
                    .expect("4 bytes"),
            ) as usize;
            if data.len() < SIGNATURE.len() + 8 + ext {
                self.partial.extend_from_slice(&data);
                return Ok(());
            }
            data.advance(SIGNATURE.len() + 8 + ext);
            self.header_done = true;
        }
        while let Some(len) = tuple_len(&data) {
            let mut t = data.split_to(len);
            if t.get_i16() == -1 {
                // The trailer: nothing follows.
                return Ok(());
            }
            self.rows += 1;
            let mut cells = Vec::with_capacity(self.decoders.len());
            let mut errors = Vec::new();
            for (i, d) in self.decoders.iter().enumerate() {
                let l = t.get_i32();
                let (Some(d), true) = (d, l >= 0) else {
                    t.advance(l.max(0) as usize);
                    cells.push(Cell::Null);
                    continue;
                };
                match decode(*d, t.split_to(l as usize)) {
                    Ok(c) => cells.push(c),
                    Err(e) => {
                        errors.push(format!("{}: {e}", self.names[i]));
                        cells.push(Cell::Null);
                    }
                }
            }
            out.push(RawRow {
                position: Position::Row(self.rows),
                cells,
                errors,
                misshapen: false,
            });
        }
        self.partial.extend_from_slice(&data);
        Ok(())
    }
}

/// The byte length of the next complete tuple (or trailer) in `b`, if all of it is there.
fn tuple_len(b: &[u8]) -> Option<usize> {
    if b.len() < 2 {
        return None;
    }
    let count = i16::from_be_bytes([b[0], b[1]]);
    if count == -1 {
        return Some(2);
    }
    let mut at = 2usize;
    for _ in 0..count.max(0) as usize {
        if b.len() < at + 4 {
            return None;
        }
        let l = i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        at += 4;
        if l > 0 {
            at += l as usize;
            if b.len() < at {
                return None;
            }
        }
    }
    Some(at)
}

/// The watermark as a literal for the query text (COPY takes no bind parameters), rendered
/// from a typed instant, never from user text. It is left untyped and carries the project's
/// UTC offset, so it selects the same rows whatever the session's TimeZone: compared with a
/// `timestamptz` column it is that instant; with a `timestamp` column (local times) the offset
/// is ignored and the local wall-clock time compared.
pub fn watermark_literal<Tz: chrono::TimeZone>(t: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f%:z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of (int4, text) tuples, the text NULL when `None`.
    fn copy_bytes(rows: &[(i32, Option<&str>)]) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&0u32.to_be_bytes()); // flags
        b.extend_from_slice(&0u32.to_be_bytes()); // header extension length
        for (i, t) in rows {
            b.extend_from_slice(&2i16.to_be_bytes());
            b.extend_from_slice(&4i32.to_be_bytes());
            b.extend_from_slice(&i.to_be_bytes());
            match t {
                Some(t) => {
                    b.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    b.extend_from_slice(t.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b
    }

    fn decoded(chunks: &[&[u8]]) -> Vec<(u64, Vec<Cell>)> {
        let mut d = CopyDecoder::new(
            vec![Some(Decode::Int4), Some(Decode::Text)],
            vec!["id".into(), "name".into()],
        );
        let mut out = Vec::new();
        for c in chunks {
            d.feed(Bytes::copy_from_slice(c), &mut out).unwrap();
        }
        out.into_iter()
            .map(|r| {
                assert!(r.errors.is_empty(), "{:?}", r.errors);
                let Position::Row(n) = r.position else {
                    panic!("{}", r.position)
                };
                (n, r.cells)
            })
            .collect()
    }

    #[test]
    fn tuples_split_anywhere_across_messages_decode_the_same() {
        let rows = [(1, Some("Hà Tĩnh")), (2, None), (-3, Some(""))];
        let bytes = copy_bytes(&rows);
        let expected: Vec<(u64, Vec<Cell>)> = vec![
            (1, vec![Cell::Int(1), Cell::Text("Hà Tĩnh".into())]),
            (2, vec![Cell::Int(2), Cell::Null]),
            (3, vec![Cell::Int(-3), Cell::Text("".into())]),
        ];
        assert_eq!(decoded(&[&bytes]), expected, "one message");
        // Every cut into two messages, including inside the header and inside a character.
        for cut in 1..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(decoded(&[a, b]), expected, "cut at byte {cut}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decoded(&singles), expected, "a byte per message");
    }

    #[test]
    fn a_skipped_column_is_null_and_never_decoded() {
        let mut bytes = copy_bytes(&[(7, Some("x"))]);
        // The text value "x" becomes a byte that is not UTF-8: an error if it were decoded.
        let at = bytes.iter().rposition(|b| *b == b'x').unwrap();
        bytes[at] = 0xff;
        let mut d = CopyDecoder::new(
            vec![Some(Decode::Int4), None],
            vec!["id".into(), "phone".into()],
        );
        let mut out = Vec::new();
        d.feed(Bytes::from(bytes.clone()), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].errors.is_empty(), "{:?}", out[0].errors);
        assert_eq!(out[0].cells, vec![Cell::Int(7), Cell::Null]);
        // Decoded, the same value is an error of its row.
        let mut d = CopyDecoder::new(
            vec![Some(Decode::Int4), Some(Decode::Text)],
            vec!["id".into(), "phone".into()],
        );
        let mut out = Vec::new();
        d.feed(Bytes::from(bytes), &mut out).unwrap();
        assert!(
            out[0].errors[0].starts_with("phone: invalid UTF-8"),
            "{:?}",
            out[0].errors
        );
    }

    #[test]
    fn times_decode_and_infinity_is_an_error_not_a_panic() {
        let micros = |v: i64| Bytes::copy_from_slice(&v.to_be_bytes());
        // 2026-09-30 23:59:59.5 as micros since 2000-01-01.
        let v = 844_127_999_500_000i64;
        let expected = NaiveDate::from_ymd_opt(2026, 9, 30)
            .unwrap()
            .and_hms_micro_opt(23, 59, 59, 500_000)
            .unwrap();
        assert_eq!(
            decode(Decode::Timestamp, micros(v)).unwrap(),
            Cell::Local(expected)
        );
        assert_eq!(
            decode(Decode::TimestampTz, micros(v)).unwrap(),
            Cell::Instant(expected.and_utc().timestamp_micros())
        );
        let day = Bytes::copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            decode(Decode::Date, day).unwrap(),
            Cell::Date(NaiveDate::from_ymd_opt(1999, 12, 31).unwrap())
        );
        for d in [Decode::Timestamp, Decode::TimestampTz] {
            assert!(decode(d, micros(i64::MAX)).is_err());
            assert!(decode(d, micros(i64::MIN)).is_err());
        }
        let infinity = Bytes::copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode(Decode::Date, infinity).is_err());
    }

    #[test]
    fn decodes_numeric() {
        // 417021000000000 = 417 0210 0000 0000 in base 10000: weight 3, digits [417, 210, 0, 0]
        // (trailing zero groups are usually stripped: digits [417, 210], weight 3).
        let mut b = vec![];
        for v in [2i16, 3, 0, 0, 417, 210] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        // sign 0 and dscale 0 are the 3rd and 4th words.
        assert_eq!(
            decode_numeric(&b).unwrap(),
            Cell::Decimal(417_021_000_000_000, 0)
        );
        // 12.50: digits [12, 5000], weight 0, dscale 2.
        let mut b = vec![];
        for v in [2i16, 0, 0, 2, 12, 5000] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(decode_numeric(&b).unwrap(), Cell::Decimal(1250, 2));
    }
}
