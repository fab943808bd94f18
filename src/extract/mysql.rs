//! MariaDB/MySQL source: the job's query run as a prepared statement (binary protocol, so
//! values arrive typed) and streamed row by row; `$watermark` is a bound parameter.

use chrono::{NaiveDate, NaiveDateTime};
use futures_util::StreamExt;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::Value;

use super::cell::Cell;
use super::source::Reading;
use super::{ExtractError, Position, RawRow, RowSink, Timeouts};

fn cell(v: Value, t: ColumnType) -> Result<Cell, String> {
    Ok(match v {
        Value::NULL => Cell::Null,
        Value::Int(i) => Cell::Int(i),
        Value::UInt(u) => Cell::Int(i64::try_from(u).map_err(|_| format!("{u} is too large"))?),
        Value::Float(f) => Cell::Float(f as f64),
        Value::Double(f) => Cell::Float(f),
        Value::Date(y, m, d, h, mi, s, us) => {
            let date = NaiveDate::from_ymd_opt(y as i32, m as u32, d as u32)
                .ok_or_else(|| format!("invalid date {y}-{m}-{d}"))?;
            match t {
                ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE => Cell::Date(date),
                _ => Cell::Local(NaiveDateTime::new(
                    date,
                    chrono::NaiveTime::from_hms_micro_opt(h as u32, mi as u32, s as u32, us)
                        .ok_or("invalid time")?,
                )),
            }
        }
        Value::Time(..) => return Err("TIME values are not read; cast them in the query".into()),
        Value::Bytes(b) => {
            let s = String::from_utf8(b).map_err(|e| {
                format!(
                    "broken encoding: invalid UTF-8 at byte {}",
                    e.utf8_error().valid_up_to()
                )
            })?;
            match t {
                // DECIMAL arrives as text in the binary protocol: keep it exact.
                ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL => {
                    Cell::Text(s.into())
                }
                _ => Cell::Text(s.into()),
            }
        }
    })
}

/// A value's size in the binary protocol, without the row's framing.
fn wire_size(v: &Value) -> u64 {
    match v {
        Value::NULL => 0,
        Value::Bytes(b) => b.len() as u64 + 1,
        Value::Int(_) | Value::UInt(_) | Value::Double(_) => 8,
        Value::Float(_) => 4,
        Value::Date(..) => 12,
        Value::Time(..) => 13,
    }
}

/// A pipeline's query on a MariaDB/MySQL connection; `$watermark` is bound to `since`.
pub(crate) struct Query {
    /// The connection URL: a secret (it may hold the password), never logged.
    pub url: String,
    pub query: String,
    /// The run's start, in local time.
    pub since: NaiveDateTime,
    /// The project zone's offset, for the session's `time_zone`.
    pub utc_offset: String,
    pub limits: Timeouts,
}

#[async_trait::async_trait]
impl Reading for Query {
    async fn read(&self, sink: &mut RowSink) -> Result<(), ExtractError> {
        let q = self;
        stream(&q.url, &q.query, q.since, &q.utc_offset, &q.limits, sink).await
    }
}

/// `query` with each `$watermark` a positional parameter, and the parameters.
fn bind_watermark(query: &str, watermark: NaiveDateTime) -> (String, mysql_async::Params) {
    use chrono::{Datelike, Timelike};
    let uses = query.matches("$watermark").count();
    let sql = query.replace("$watermark", "?");
    let w = Value::Date(
        watermark.year() as u16,
        watermark.month() as u8,
        watermark.day() as u8,
        watermark.hour() as u8,
        watermark.minute() as u8,
        watermark.second() as u8,
        watermark.nanosecond() / 1000,
    );
    let params: Vec<Value> = (0..uses).map(|_| w.clone()).collect();
    if params.is_empty() {
        (sql, mysql_async::Params::Empty)
    } else {
        (sql, mysql_async::Params::Positional(params))
    }
}

/// Row `n` of the result as cells; a value that cannot be read is a reason to quarantine it.
fn row_of(values: Vec<Value>, types: &[ColumnType], names: &[String], n: u64) -> RawRow {
    let mut errors = Vec::new();
    let cells = values
        .into_iter()
        .zip(types)
        .enumerate()
        .map(|(i, (v, t))| {
            cell(v, *t).unwrap_or_else(|e| {
                errors.push(format!("{}: {e}", names[i]));
                Cell::Null
            })
        })
        .collect();
    RawRow {
        position: Position::Row(n),
        cells,
        errors,
        misshapen: false,
    }
}

/// Streams `query`'s rows with `$watermark` bound to `watermark` (local time).
pub(crate) async fn stream(
    url: &str,
    query: &str,
    watermark: NaiveDateTime,
    utc_offset: &str,
    limits: &Timeouts,
    sink: &mut RowSink,
) -> Result<(), ExtractError> {
    const PEER: &str = "MariaDB/MySQL";
    let my = super::tls::mysql(url).map_err(ExtractError::Config)?;
    let mut conn = limits
        .connect(PEER, my.connect())
        .await?
        .map_err(ExtractError::connect)?;
    // `TIMESTAMP` columns are instants shown in the session's zone: in the project's, they
    // compare with the local watermark and read back as local times, whatever the server's
    // default. An offset, since named zones need the server's zone tables.
    limits
        .read(
            PEER,
            conn.query_drop(format!("SET time_zone = '{utc_offset}'")),
        )
        .await?
        .map_err(|e| {
            ExtractError::peer(
                format!("cannot set the session's time_zone to {utc_offset}"),
                e,
            )
        })?;
    let (sql, params) = bind_watermark(query, watermark);
    let mut result = limits
        .read(PEER, conn.exec_iter(sql, params))
        .await?
        .map_err(|e| ExtractError::peer("the pipeline's query failed", e))?;
    let columns = result.columns().map(|c| c.to_vec()).unwrap_or_default();
    let names: Vec<String> = columns.iter().map(|c| c.name_str().into_owned()).collect();
    sink.columns(names.clone()).await?;
    let types: Vec<ColumnType> = columns.iter().map(|c| c.column_type()).collect();
    let mut stream = result
        .stream::<mysql_async::Row>()
        .await
        .map_err(ExtractError::Mysql)?
        .ok_or_else(|| ExtractError::Source("the query returned no result set".into()))?;
    let mut n = 0u64;
    while let Some(row) = limits.read(PEER, stream.next()).await? {
        let row = row.map_err(|e| ExtractError::peer(format!("reading row {}", n + 1), e))?;
        n += 1;
        let values = row.unwrap();
        // The driver does not expose the bytes on the wire: the values' own sizes in the
        // binary protocol stand for them in the job's summary.
        sink.count_bytes(values.iter().map(wire_size).sum());
        sink.push(row_of(values, &types, &names, n)).await?;
    }
    drop(stream);
    conn.disconnect().await.map_err(ExtractError::Mysql)?;
    Ok(())
}
