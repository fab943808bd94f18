//! HTTP source: the one-stop-shop system's paged JSON sync API, read page by page with a
//! bearer token from the environment, the watermark as a query parameter, and retries with
//! backoff on server errors and timeouts.

use chrono::NaiveDateTime;
use std::time::Duration;

use super::file::{check_fields, eval};
use super::{ExtractError, Position, RawRow, RowSink};
use crate::config::pipeline::ExtractJob;

/// Attempts per page before the run fails.
const ATTEMPTS: u32 = 5;

pub struct HttpSource<'a> {
    pub base_url: &'a str,
    pub endpoint: &'a str,
    pub records: Option<&'a str>,
    pub token: Option<&'a str>,
    pub page_size: u32,
    pub timeout: Duration,
}

/// Reads every page from `since` (local time, sent as `since=yyyyMMddHHmmss`) into `sink`.
pub(crate) async fn stream(
    src: &HttpSource<'_>,
    job: &ExtractJob,
    columns: &[String],
    since: NaiveDateTime,
    sink: &mut RowSink,
) -> Result<(), ExtractError> {
    let client = reqwest::Client::builder()
        .timeout(src.timeout)
        .build()
        .map_err(|e| ExtractError::Source(format!("cannot start the HTTP client: {e}")))?;
    let url = format!(
        "{}/{}",
        src.base_url.trim_end_matches('/'),
        src.endpoint.trim_start_matches('/')
    );
    sink.columns(columns.to_vec()).await?;
    let since = since.format("%Y%m%d%H%M%S").to_string();
    let mut checked = false;
    let mut n = 0u64;
    for page in 1u64.. {
        let (body, size) = fetch(&client, &url, src, &since, page).await?;
        sink.count_bytes(size);
        let list = match (&body, src.records) {
            (serde_json::Value::Array(a), _) => a.clone(),
            (serde_json::Value::Object(o), Some(field)) => match o.get(field) {
                Some(serde_json::Value::Array(a)) => a.clone(),
                _ => return Err(ExtractError::Source(format!("{url} page {page}: no `{field}` list in the response"))),
            },
            _ => return Err(ExtractError::Source(format!("{url} page {page}: expected a JSON list of records (or set `records` to the field that holds them)"))),
        };
        let count = list.len();
        for (i, rec) in list.into_iter().enumerate() {
            n += 1;
            let position = Position::Text(format!("page {page} record {}", i + 1));
            let serde_json::Value::Object(rec) = rec else {
                sink.push(RawRow {
                    position,
                    cells: vec![super::cell::Cell::Null; columns.len()],
                    errors: vec!["not a JSON object".into()],
                })
                .await?;
                continue;
            };
            if !checked {
                check_fields(
                    &format!("{url} page {page}"),
                    &rec.keys().cloned().collect(),
                    job,
                )?;
                checked = true;
            }
            let mut errors = Vec::new();
            let cells = columns
                .iter()
                .map(|c| {
                    eval(&job.columns[c], &rec).unwrap_or_else(|e| {
                        errors.push(format!("{c}: {e}"));
                        super::cell::Cell::Null
                    })
                })
                .collect();
            sink.push(RawRow {
                position,
                cells,
                errors,
            })
            .await?;
        }
        if count < src.page_size as usize {
            break;
        }
    }
    tracing::debug!(records = n, "http source read");
    Ok(())
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    src: &HttpSource<'_>,
    since: &str,
    page: u64,
) -> Result<(serde_json::Value, u64), ExtractError> {
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let mut req = client.get(url).query(&[
            ("since", since.to_string()),
            ("page", page.to_string()),
            ("page_size", src.page_size.to_string()),
        ]);
        if let Some(t) = src.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                let body = resp.bytes().await.map_err(|e| {
                    ExtractError::Source(format!("{url} page {page}: reading the response: {e}"))
                })?;
                let value = serde_json::from_slice(&body).map_err(|e| {
                    ExtractError::Source(format!(
                        "{url} page {page}: the response is not JSON: {e}"
                    ))
                })?;
                return Ok((value, body.len() as u64));
            }
            Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {
                last = format!("HTTP {}", resp.status());
            }
            Ok(resp) => {
                let status = resp.status();
                let hint = if status.as_u16() == 401 || status.as_u16() == 403 {
                    "; check the connection's token"
                } else {
                    ""
                };
                return Err(ExtractError::Source(format!(
                    "{url} page {page}: HTTP {status}{hint}"
                )));
            }
            Err(e) => {
                last = if e.is_timeout() {
                    "timed out".into()
                } else {
                    e.to_string()
                }
            }
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
