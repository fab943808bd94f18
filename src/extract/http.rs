//! HTTP source: the one-stop-shop system's paged JSON sync API, read page by page with a
//! bearer token from the environment, the watermark as a query parameter, and retries with
//! backoff on server errors and timeouts. Paging ends only on an empty page or a response
//! that says it is the last; a repeated page, too many pages or too large a body fail the run.

use chrono::NaiveDateTime;
use serde_json::{Map, Value};
use std::time::Duration;

use super::file::{check_fields, eval};
use super::source::Reading;
use super::{ExtractError, Position, RawRow, RowSink};
use crate::config::pipeline::ExtractJob;
use crate::config::settings::Connection;

/// Attempts per page before the run fails.
const ATTEMPTS: u32 = 5;

/// A pipeline's sync API on an HTTP connection.
pub struct HttpSource {
    pub base_url: String,
    pub endpoint: String,
    pub records: Option<String>,
    /// The bearer token: a secret, never logged.
    pub token: Option<String>,
    pub page_size: u32,
    /// The longest one request may take, whole body included.
    pub timeout: Duration,
    pub limits: Limits,
    pub job: ExtractJob,
    /// The run's start, in local time.
    pub since: NaiveDateTime,
}

#[async_trait::async_trait]
impl Reading for HttpSource {
    async fn read(&self, sink: &mut RowSink) -> Result<(), ExtractError> {
        let columns: Vec<String> = self.job.columns.keys().cloned().collect();
        stream(self, &self.job, &columns, self.since, sink).await
    }
}

/// The connection's bounds on a peer that hangs, never stops paging or answers too much.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The connection's name, for the errors that tell which setting to change.
    pub connection: String,
    pub connect_timeout: Duration,
    pub max_pages: u64,
    pub max_response_bytes: u64,
}

impl Limits {
    pub fn of(conn: &Connection) -> Limits {
        Limits {
            connection: conn.name.clone(),
            connect_timeout: Duration::from_secs(conn.connect_timeout_secs),
            max_pages: conn.max_pages,
            max_response_bytes: conn.max_response_mib.saturating_mul(1 << 20),
        }
    }
}

/// What a response object says of the pages after it.
#[derive(Debug, PartialEq, Eq)]
enum Declared {
    /// `next` is null (or false, or ""), `has_more` is false, or `page * page_size >= total`.
    Last,
    /// Nothing explicit: only an empty page ends the paging.
    Unknown,
}

/// A short page is no proof of the end (servers cap the page size on their own): only an
/// explicit field is.
fn declared(o: &Map<String, Value>, page: u64, page_size: u32) -> Declared {
    let last = match o.get("next") {
        Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::String(s)) if s.is_empty() => true,
        _ => false,
    } || o.get("has_more") == Some(&Value::Bool(false))
        || o.get("total")
            .and_then(Value::as_u64)
            .is_some_and(|total| page.saturating_mul(page_size as u64) >= total);
    if last {
        Declared::Last
    } else {
        Declared::Unknown
    }
}

/// Reads every page from `since` (local time, sent as `since=yyyyMMddHHmmss`) into `sink`.
pub(crate) async fn stream(
    src: &HttpSource,
    job: &ExtractJob,
    columns: &[String],
    since: NaiveDateTime,
    sink: &mut RowSink,
) -> Result<(), ExtractError> {
    let client = reqwest::Client::builder()
        .timeout(src.timeout)
        .connect_timeout(src.limits.connect_timeout)
        .build()
        .map_err(|e| ExtractError::peer("cannot start the HTTP client", e))?;
    let url = format!(
        "{}/{}",
        src.base_url.trim_end_matches('/'),
        src.endpoint.trim_start_matches('/')
    );
    sink.columns(columns.to_vec()).await?;
    let since = since.format("%Y%m%d%H%M%S").to_string();
    let mut checked = false;
    let mut n = 0u64;
    let mut previous: Vec<Value> = Vec::new();
    for page in 1u64.. {
        if page > src.limits.max_pages {
            return Err(ExtractError::Source(format!(
                "{url}: {} pages read and the server has not reached its last page \
                 (`max_pages` of connection `{}`); raise `max_pages` in parstat.toml if the \
                 source really holds that many, or check that the API ends its paging",
                src.limits.max_pages, src.limits.connection
            )));
        }
        let (body, size) = fetch(&client, &url, src, &since, page).await?;
        sink.count_bytes(size);
        let (list, end) = page_records(body, src, &url, page)?;
        if list.is_empty() {
            break;
        }
        // A server that ignores `page` sends the same records again: taking them would count
        // them twice, taking them as the end could miss the rest.
        if list == previous {
            return Err(ExtractError::Source(format!(
                "{url} page {page}: the same {} records as page {}; the server seems to ignore \
                 the `page` parameter, so the run stops rather than count them twice or miss \
                 the rest; check the API's paging",
                list.len(),
                page - 1
            )));
        }
        for (i, rec) in list.iter().enumerate() {
            n += 1;
            let position = Position::Text(format!("page {page} record {}", i + 1));
            if !checked {
                if let Value::Object(rec) = rec {
                    let fields = rec.keys().cloned().collect();
                    check_fields(&format!("{url} page {page}"), &fields, job)?;
                    checked = true;
                }
            }
            sink.push(record_row(rec, position, job, columns)).await?;
        }
        if end == Declared::Last {
            break;
        }
        previous = list;
    }
    tracing::debug!(records = n, "http source read");
    Ok(())
}

/// A page's records and what the page says of the pages after it.
fn page_records(
    body: Value,
    src: &HttpSource,
    url: &str,
    page: u64,
) -> Result<(Vec<Value>, Declared), ExtractError> {
    match (body, src.records.as_deref()) {
        (Value::Array(a), _) => Ok((a, Declared::Unknown)),
        (Value::Object(mut o), Some(field)) => match o.remove(field) {
            Some(Value::Array(a)) => Ok((a, declared(&o, page, src.page_size))),
            _ => Err(ExtractError::Source(format!(
                "{url} page {page}: no `{field}` list in the response"
            ))),
        },
        _ => Err(ExtractError::Source(format!(
            "{url} page {page}: expected a JSON list of records (or set `records` to the field that holds them)"
        ))),
    }
}

/// One record as a row of the dataset's columns; what cannot be read goes to the quarantine.
fn record_row(rec: &Value, position: Position, job: &ExtractJob, columns: &[String]) -> RawRow {
    let Value::Object(rec) = rec else {
        return RawRow {
            position,
            cells: vec![super::cell::Cell::Null; columns.len()],
            errors: vec!["not a JSON object".into()],
            misshapen: false,
        };
    };
    let mut errors = Vec::new();
    let cells = columns
        .iter()
        .map(|c| {
            eval(&job.columns[c], rec).unwrap_or_else(|e| {
                errors.push(format!("{c}: {e}"));
                super::cell::Cell::Null
            })
        })
        .collect();
    RawRow {
        position,
        cells,
        errors,
        misshapen: false,
    }
}

/// Why one attempt at a page failed.
enum Failure {
    /// Worth another attempt: a server error, 429, a timeout, a connection cut.
    Retry(String),
    /// Would fail the same way again.
    Fatal(ExtractError),
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    src: &HttpSource,
    since: &str,
    page: u64,
) -> Result<(Value, u64), ExtractError> {
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match attempt_page(client, url, src, since, page).await {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => last = e,
        }
        if attempt < ATTEMPTS {
            tracing::warn!(page, attempt, error = %last, "retrying the sync API");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(ExtractError::Source(format!(
        "{url} page {page}: {last} after {ATTEMPTS} attempts"
    )))
}

fn describe(e: &reqwest::Error, src: &HttpSource) -> String {
    if e.is_connect() && e.is_timeout() {
        format!(
            "no connection within {} s (`connect_timeout_secs`)",
            src.limits.connect_timeout.as_secs()
        )
    } else if e.is_timeout() {
        format!(
            "no complete answer within {} s (`timeout_secs`)",
            src.timeout.as_secs()
        )
    } else {
        // reqwest's Display leaves out the cause (connection refused, reset): keep it.
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    }
}

/// One request for `page`: its JSON and its size, the body read in chunks up to the cap.
async fn attempt_page(
    client: &reqwest::Client,
    url: &str,
    src: &HttpSource,
    since: &str,
    page: u64,
) -> Result<(Value, u64), Failure> {
    let mut req = client.get(url).query(&[
        ("since", since.to_string()),
        ("page", page.to_string()),
        ("page_size", src.page_size.to_string()),
    ]);
    if let Some(t) = &src.token {
        req = req.bearer_auth(t);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| Failure::Retry(describe(&e, src)))?;
    let status = resp.status();
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(Failure::Retry(format!("HTTP {status}")));
    }
    if !status.is_success() {
        let hint = if status.as_u16() == 401 || status.as_u16() == 403 {
            "; check the connection's token"
        } else {
            ""
        };
        return Err(Failure::Fatal(ExtractError::Source(format!(
            "{url} page {page}: HTTP {status}{hint}"
        ))));
    }
    let cap = src.limits.max_response_bytes;
    let too_large = || {
        Failure::Fatal(ExtractError::Source(format!(
            "{url} page {page}: the response is larger than {} MiB (`max_response_mib` of \
             connection `{}`); lower `page_size` or raise `max_response_mib` in parstat.toml",
            cap >> 20,
            src.limits.connection
        )))
    };
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(cap) as usize);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Failure::Retry(format!("reading the response: {}", describe(&e, src))))?
    {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let value = serde_json::from_slice(&body).map_err(|e| {
        Failure::Fatal(ExtractError::Source(format!(
            "{url} page {page}: the response is not JSON: {e}"
        )))
    })?;
    Ok((value, body.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn only_an_explicit_field_declares_the_last_page() {
        for (text, page, want) in [
            (r#"{"page": 3}"#, 3, Declared::Unknown),
            (r#"{"next": null}"#, 3, Declared::Last),
            (r#"{"next": "/api?page=4"}"#, 3, Declared::Unknown),
            (r#"{"next": ""}"#, 3, Declared::Last),
            (r#"{"has_more": false}"#, 3, Declared::Last),
            (r#"{"has_more": true}"#, 3, Declared::Unknown),
            (r#"{"total": 1000}"#, 3, Declared::Unknown),
            (r#"{"total": 1000}"#, 10, Declared::Last),
            (r#"{"total": 950}"#, 10, Declared::Last),
            (r#"{"total": 1001}"#, 10, Declared::Unknown),
        ] {
            assert_eq!(declared(&obj(text), page, 100), want, "{text} page {page}");
        }
    }
}
