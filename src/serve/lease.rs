//! The scheduler's lease in the warehouse: numbered epochs created with create-if-absent
//! writes (only one contender can create the next), renewed by heartbeats. A scheduler whose
//! heartbeat is older than the lease is presumed dead and the next epoch may be taken; a
//! holder that sees a newer epoch has lost the lease and stops.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::warehouse::WarehouseError;

#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    holder: String,
    at: DateTime<Utc>,
    #[serde(default)]
    released: bool,
}

pub struct Lease {
    store: Arc<dyn ObjectStore>,
    dir: StorePath,
    pub epoch: u64,
    pub holder: String,
    ttl: chrono::Duration,
}

/// Who holds the lease now, when it is not us.
#[derive(Debug)]
pub struct Held {
    pub holder: String,
    pub seconds_left: i64,
}

fn err(e: impl std::fmt::Display) -> WarehouseError {
    WarehouseError::Data {
        table: "_lease".into(),
        message: e.to_string(),
    }
}

async fn read(store: &dyn ObjectStore, p: &StorePath) -> Result<Option<Beat>, WarehouseError> {
    match store.get(p).await {
        Ok(r) => {
            let b = r.bytes().await.map_err(err)?;
            Ok(serde_json::from_slice(&b).ok())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

async fn epochs(store: &dyn ObjectStore, dir: &StorePath) -> Result<Vec<u64>, WarehouseError> {
    let mut out: Vec<u64> = store
        .list(Some(dir))
        .try_filter_map(|m| async move {
            Ok(m.location
                .filename()
                .and_then(|n| n.strip_prefix("epoch-"))
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok()))
        })
        .try_collect()
        .await
        .map_err(err)?;
    out.sort_unstable();
    Ok(out)
}

impl Lease {
    /// One attempt to take the lease: `Ok(Err(held))` while another scheduler lives.
    pub async fn acquire(
        project_root: &std::path::Path,
        warehouse_url: &str,
        holder: &str,
        ttl_seconds: u64,
    ) -> Result<Result<Lease, Held>, WarehouseError> {
        let (store, dir) =
            crate::warehouse::object_store_at(project_root, warehouse_url, "_lease")?;
        let dir = dir.join("scheduler");
        let ttl = chrono::Duration::seconds(ttl_seconds as i64);
        let next = match epochs(store.as_ref(), &dir).await?.last() {
            None => 0,
            Some(&n) => {
                let beat = match read(
                    store.as_ref(),
                    &dir.clone().join(format!("heartbeat-{n:012}.json")),
                )
                .await?
                {
                    Some(b) => Some(b),
                    None => {
                        read(
                            store.as_ref(),
                            &dir.clone().join(format!("epoch-{n:012}.json")),
                        )
                        .await?
                    }
                };
                if let Some(b) = beat {
                    let age = Utc::now() - b.at;
                    if !b.released && age < ttl {
                        return Ok(Err(Held {
                            holder: b.holder,
                            seconds_left: (ttl - age).num_seconds(),
                        }));
                    }
                }
                n + 1
            }
        };
        let beat = Beat {
            holder: holder.to_string(),
            at: Utc::now(),
            released: false,
        };
        let body = serde_json::to_vec(&beat).map_err(err)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store
            .put_opts(
                &dir.clone().join(format!("epoch-{next:012}.json")),
                PutPayload::from(body),
                opts,
            )
            .await
        {
            Ok(_) => Ok(Ok(Lease {
                store,
                dir,
                epoch: next,
                holder: holder.to_string(),
                ttl,
            })),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Err(Held {
                holder: "another scheduler (it took the lease just now)".into(),
                seconds_left: ttl.num_seconds(),
            })),
            Err(e) => Err(err(e)),
        }
    }

    /// Renews the lease; `false` when a newer epoch exists (the lease was lost).
    pub async fn renew(&self) -> Result<bool, WarehouseError> {
        if epochs(self.store.as_ref(), &self.dir)
            .await?
            .last()
            .is_some_and(|&n| n > self.epoch)
        {
            return Ok(false);
        }
        self.beat(false).await?;
        Ok(true)
    }

    /// Gives the lease up at once (a clean stop), so that a successor need not wait.
    pub async fn release(&self) -> Result<(), WarehouseError> {
        self.beat(true).await
    }

    async fn beat(&self, released: bool) -> Result<(), WarehouseError> {
        let beat = Beat {
            holder: self.holder.clone(),
            at: Utc::now(),
            released,
        };
        let body = serde_json::to_vec(&beat).map_err(err)?;
        self.store
            .put(
                &self
                    .dir
                    .clone()
                    .join(format!("heartbeat-{:012}.json", self.epoch)),
                PutPayload::from(body),
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    pub fn ttl(&self) -> std::time::Duration {
        self.ttl.to_std().unwrap_or_default()
    }
}
