//! The delivery ledger in the warehouse: for each report, period and recipient, numbered
//! claims written create-if-absent (so two senders cannot both win one) and their outcomes.
//! A delivery is sent when its latest claim is settled `sent`; a failed or abandoned claim
//! lets a later run claim the next number.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("delivery ledger at {url}: {message}")]
    Store { url: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Sent,
    Failed,
    /// Not sent now: an earlier run sent it.
    AlreadyDelivered,
    /// Not sent now: another sender holds a live claim and has not said how it went. The run
    /// is not done until a later one finds it sent.
    InProgress,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClaimRecord {
    report: String,
    period: String,
    recipient: String,
    message_id: String,
    claimed_at: DateTime<Utc>,
    resend: bool,
    host: String,
    pid: u32,
    /// The sender's process start (see `warehouse::lease`): with host and pid, tells a claim
    /// of a sender that died on this host, to be taken again at once.
    #[serde(default)]
    pid_start: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct OutcomeRecord {
    outcome: Outcome,
    at: DateTime<Utc>,
    error: Option<String>,
}

/// A claim this process won: settle it with the outcome.
#[derive(Debug)]
pub struct Token {
    dir: StorePath,
    n: u32,
}

#[derive(Debug)]
pub enum Claim {
    Mine(Token),
    /// Sent by an earlier run.
    Sent,
    /// Another sender's live claim, without an outcome yet.
    InProgress,
}

/// A claim older than this (by the store's own time of the claim) with no outcome belongs to
/// a sender that died: it may be claimed again (the message keeps its Message-ID, so a client
/// shows a repeat as the same message). A claim of a sender that died on this host is taken
/// again at once.
const LEASE: chrono::Duration = chrono::Duration::minutes(15);

pub struct Ledger {
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    url: String,
}

impl Ledger {
    /// The ledger under `<warehouse>/_ledger/deliveries`.
    pub fn open(
        project_root: &std::path::Path,
        warehouse_url: &str,
    ) -> Result<Ledger, LedgerError> {
        let (store, base) =
            crate::warehouse::object_store_at(project_root, warehouse_url, "_ledger").map_err(
                |e| LedgerError::Store {
                    url: warehouse_url.to_string(),
                    message: e.to_string(),
                },
            )?;
        let root = base.join("deliveries");
        Ok(Ledger {
            store,
            root,
            url: warehouse_url.to_string(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::Store {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    fn dir(&self, report: &str, period: &str, recipient: &str) -> StorePath {
        let who = hex::encode(&Sha256::digest(recipient.trim().to_lowercase().as_bytes())[..12]);
        self.root.clone().join(report).join(period).join(who)
    }

    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        p: &StorePath,
    ) -> Result<Option<T>, LedgerError> {
        match self.store.get(p).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| self.err(e))?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| self.err(format!("{p}: {e}")))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The claim numbers already written for a delivery.
    async fn claims(&self, dir: &StorePath) -> Result<Vec<u32>, LedgerError> {
        let mut out: Vec<u32> = self
            .store
            .list(Some(dir))
            .try_filter_map(|m| async move {
                let name = m.location.filename().unwrap_or_default().to_string();
                Ok(name
                    .strip_prefix("claim-")
                    .and_then(|s| s.strip_suffix(".json"))
                    .and_then(|s| s.parse::<u32>().ok()))
            })
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        out.sort_unstable();
        Ok(out)
    }

    /// Claims the delivery of `report` for `period` to `recipient`, unless it was sent (and
    /// this is no `resend`) or another sender holds a live claim.
    pub async fn claim(
        &self,
        report: &str,
        period: &str,
        recipient: &str,
        message_id: &str,
        resend: bool,
    ) -> Result<Claim, LedgerError> {
        crate::warehouse::lease::require_exclusion(self.store.as_ref(), &self.root)
            .await
            .map_err(|e| self.err(e))?;
        let dir = self.dir(report, period, recipient);
        let claims = self.claims(&dir).await?;
        let next = match claims.last() {
            None => 0,
            Some(&n) => {
                let outcome: Option<OutcomeRecord> = self
                    .read(&dir.clone().join(format!("outcome-{n}.json")))
                    .await?;
                match outcome.map(|o| o.outcome) {
                    Some(Outcome::Sent) if !resend => return Ok(Claim::Sent),
                    Some(_) => n + 1,
                    None => {
                        let path = dir.clone().join(format!("claim-{n}.json"));
                        let claim: Option<ClaimRecord> = self.read(&path).await?;
                        // The claim's age by the store's clock, not the writer's.
                        let written = match self.store.head(&path).await {
                            Ok(m) => Some(m.last_modified),
                            Err(object_store::Error::NotFound { .. }) => None,
                            Err(e) => return Err(self.err(e)),
                        };
                        let dead = claim.as_ref().is_some_and(|c| {
                            crate::warehouse::lease::gone_from_this_host(
                                Some(&c.host),
                                Some(c.pid),
                                c.pid_start,
                            )
                        });
                        let live = written.is_some_and(|t| Utc::now() - t < LEASE);
                        if live && !dead {
                            return Ok(Claim::InProgress);
                        }
                        n + 1
                    }
                }
            }
        };
        let (host, pid, pid_start) = crate::warehouse::lease::this_process();
        let record = ClaimRecord {
            report: report.into(),
            period: period.into(),
            recipient: recipient.into(),
            message_id: message_id.into(),
            claimed_at: Utc::now(),
            resend,
            host,
            pid,
            pid_start,
        };
        let body = serde_json::to_vec_pretty(&record).map_err(|e| self.err(e))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(
                &dir.clone().join(format!("claim-{next}.json")),
                PutPayload::from(body),
                opts,
            )
            .await
        {
            Ok(_) => Ok(Claim::Mine(Token { dir, n: next })),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Claim::InProgress),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Records the outcome of a claim this process won.
    pub async fn settle(
        &self,
        token: &Token,
        outcome: Outcome,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        let record = OutcomeRecord {
            outcome,
            at: Utc::now(),
            error: error.map(String::from),
        };
        let body = serde_json::to_vec_pretty(&record).map_err(|e| self.err(e))?;
        self.store
            .put(
                &token.dir.clone().join(format!("outcome-{}.json", token.n)),
                PutPayload::from(body),
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every delivery recorded for `report` and `period`: (recipient, attempts, last outcome).
    pub async fn deliveries(
        &self,
        report: &str,
        period: &str,
    ) -> Result<Vec<(String, u32, Option<Outcome>)>, LedgerError> {
        let base = self.root.clone().join(report).join(period);
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        let mut dirs: Vec<StorePath> = metas
            .iter()
            .filter_map(|m| {
                let parts: Vec<_> = m.location.parts().collect();
                let n = parts.len();
                (n >= 2).then(|| StorePath::from_iter(parts[..n - 1].iter().cloned()))
            })
            .collect();
        dirs.sort_by_key(|d| d.to_string());
        dirs.dedup();
        let mut out = Vec::new();
        for d in dirs {
            let claims = self.claims(&d).await?;
            let Some(&n) = claims.last() else { continue };
            let claim: Option<ClaimRecord> = self
                .read(&d.clone().join(format!("claim-{n}.json")))
                .await?;
            let outcome: Option<OutcomeRecord> = self
                .read(&d.clone().join(format!("outcome-{n}.json")))
                .await?;
            out.push((
                claim.map(|c| c.recipient).unwrap_or_default(),
                n + 1,
                outcome.map(|o| o.outcome),
            ));
        }
        Ok(out)
    }
}
