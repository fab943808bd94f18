//! Leases in the warehouse: one scheduler at a time, one run of a pipeline at a time. Each
//! lease is a folder of numbered epochs created with create-if-absent writes (only one
//! contender can create the next), renewed by heartbeats. A holder whose heartbeat is older
//! than the lease, or whose process on this host is gone, is presumed dead and the next epoch
//! may be taken; a holder that sees a newer epoch has lost the lease and stops.

use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The holder's host, process id and process start (clock ticks since boot): on the same
    /// host, a holder whose process is gone is known dead at once, without waiting out the
    /// lease (a run killed with SIGKILL can be rerun straight away).
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    pid_start: Option<u64>,
    /// When the holder took the lease.
    #[serde(default)]
    since: Option<DateTime<Utc>>,
}

pub struct Lease {
    store: Arc<dyn ObjectStore>,
    dir: StorePath,
    pub epoch: u64,
    pub holder: String,
    ttl: chrono::Duration,
    since: DateTime<Utc>,
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

/// This machine's name, as the kernel knows it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`), which
/// tells a live holder from a new process that reuses its id.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process, as [`gone_from_this_host`] reads it back: host, id and start.
pub fn this_process() -> (String, u32, Option<u64>) {
    let pid = std::process::id();
    (host_name(), pid, process_start(pid))
}

/// Whether a process recorded as (`host`, `pid`, `start`) is of this host and no longer runs
/// (its id gone, or taken by a process that started at another time). Unknown means alive.
pub fn gone_from_this_host(host: Option<&str>, pid: Option<u32>, start: Option<u64>) -> bool {
    let (Some(host), Some(pid)) = (host, pid) else {
        return false;
    };
    if host != host_name() || !std::path::Path::new("/proc/self/stat").exists() {
        return false;
    }
    match process_start(pid) {
        None => true,
        Some(now) => start.is_some_and(|s| s != now),
    }
}

impl Beat {
    fn new(holder: &str, released: bool, since: DateTime<Utc>) -> Beat {
        let pid = std::process::id();
        Beat {
            holder: holder.to_string(),
            at: Utc::now(),
            released,
            host: Some(host_name()),
            pid: Some(pid),
            pid_start: process_start(pid),
            since: Some(since),
        }
    }

    fn gone_from_this_host(&self) -> bool {
        gone_from_this_host(self.host.as_deref(), self.pid, self.pid_start)
    }

    fn describe(&self) -> String {
        let mut s = self.holder.clone();
        if let (Some(host), Some(pid)) = (&self.host, self.pid) {
            s.push_str(&format!(" (process {pid} on {host}"));
            if let Some(since) = self.since {
                s.push_str(&format!(
                    ", since {}",
                    since.format("%Y-%m-%d %H:%M:%S UTC")
                ));
            }
            s.push(')');
        }
        s
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

fn epoch_file(dir: &StorePath, n: u64) -> StorePath {
    dir.clone().join(format!("epoch-{n:012}.json"))
}

fn heartbeat_file(dir: &StorePath, n: u64) -> StorePath {
    dir.clone().join(format!("heartbeat-{n:012}.json"))
}

/// Stores already found to refuse a second create-if-absent write, in this process.
static EXCLUSIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
    std::sync::OnceLock::new();

/// Checks, once per store and process, that `store` refuses a second create-if-absent write
/// under `dir`: leases and delivery claims exclude each other only through it, and an S3
/// server that ignores `If-None-Match` would let two holders both win, silently.
pub async fn require_exclusion(
    store: &dyn ObjectStore,
    dir: &StorePath,
) -> Result<(), WarehouseError> {
    let key = format!("{store}/{dir}");
    let known = EXCLUSIVE.get_or_init(Default::default);
    if known.lock().map(|k| k.contains(&key)).unwrap_or(false) {
        return Ok(());
    }
    let probe = dir
        .clone()
        .join(format!("probe-{}.json", uuid::Uuid::new_v4().simple()));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(&probe, PutPayload::from_static(b"{}"), create())
        .await
        .map_err(err)?;
    let second = store
        .put_opts(&probe, PutPayload::from_static(b"{}"), create())
        .await;
    let _ = store.delete(&probe).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => {
            if let Ok(mut k) = known.lock() {
                k.insert(key);
            }
            Ok(())
        }
        Ok(_) => Err(err(format!(
            "the warehouse's store ({store}) accepted a second create-if-absent write of one object: it ignores conditional writes (S3 `If-None-Match`), so two schedulers, two runs of a pipeline or two senders could not exclude each other. Point `[warehouse] url` in parstat.toml at a store that supports them (AWS S3, MinIO, or a local folder)"
        ))),
        Err(e) => Err(err(e)),
    }
}

impl Lease {
    /// One attempt to take the lease `name` (`scheduler`, `pipeline-dossier`): `Ok(Err(held))`
    /// while another holder lives.
    pub async fn acquire(
        project_root: &std::path::Path,
        warehouse_url: &str,
        name: &str,
        holder: &str,
        ttl_seconds: u64,
    ) -> Result<Result<Lease, Held>, WarehouseError> {
        let (store, dir) =
            crate::warehouse::object_store_at(project_root, warehouse_url, "_lease")?;
        require_exclusion(store.as_ref(), &dir).await?;
        let dir = dir.join(name);
        let ttl = chrono::Duration::seconds(ttl_seconds as i64);
        let known = epochs(store.as_ref(), &dir).await?;
        let next = match known.last() {
            None => 0,
            Some(&n) => {
                let beat = match read(store.as_ref(), &heartbeat_file(&dir, n)).await? {
                    Some(b) => Some(b),
                    None => read(store.as_ref(), &epoch_file(&dir, n)).await?,
                };
                if let Some(b) = beat {
                    // Ages are judged by this clock; a holder's own clock may differ by a
                    // little, which the lease's length absorbs.
                    let age = Utc::now() - b.at;
                    if !b.released && age < ttl && !b.gone_from_this_host() {
                        return Ok(Err(Held {
                            holder: b.describe(),
                            seconds_left: (ttl - age).num_seconds(),
                        }));
                    }
                }
                n + 1
            }
        };
        let since = Utc::now();
        let beat = Beat::new(holder, false, since);
        let body = serde_json::to_vec(&beat).map_err(err)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store
            .put_opts(&epoch_file(&dir, next), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => {
                // Epochs before the one just replaced are of no further use: keep the folder
                // small for the next contender's listing.
                for &old in known.iter().filter(|&&e| e + 1 < next) {
                    let _ = store.delete(&epoch_file(&dir, old)).await;
                    let _ = store.delete(&heartbeat_file(&dir, old)).await;
                }
                Ok(Ok(Lease {
                    store,
                    dir,
                    epoch: next,
                    holder: holder.to_string(),
                    ttl,
                    since,
                }))
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                let holder = read(store.as_ref(), &epoch_file(&dir, next))
                    .await?
                    .map(|b| b.describe())
                    .unwrap_or_else(|| "another process (it took the lease just now)".into());
                Ok(Err(Held {
                    holder,
                    seconds_left: ttl.num_seconds(),
                }))
            }
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
        let beat = Beat::new(&self.holder, released, self.since);
        let body = serde_json::to_vec(&beat).map_err(err)?;
        self.store
            .put(
                &heartbeat_file(&self.dir, self.epoch),
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

/// The lease a daemon's job works under, asked of the store before each commit and each
/// send: a daemon paused past its lease (SIGSTOP, a suspended machine) must not publish or
/// email beside the one that took over. Outside the daemon there is none, and nothing to ask.
#[derive(Clone, Default)]
pub struct Guard(Option<Arc<Lease>>);

/// A guarded job found its daemon's lease taken by another.
#[derive(Debug, thiserror::Error)]
#[error("the scheduler's lease (epoch {epoch}) was taken by another scheduler; this job stopped before {before}")]
pub struct LeaseLost {
    pub epoch: u64,
    pub before: String,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Guard(none)"),
            Some(l) => write!(f, "Guard(epoch {})", l.epoch),
        }
    }
}

impl Guard {
    pub fn of(lease: Arc<Lease>) -> Guard {
        Guard(Some(lease))
    }

    /// Ok while the lease is ours (or there is none); `before` names the step it guards.
    pub async fn check(&self, before: &str) -> Result<(), GuardError> {
        let Some(lease) = &self.0 else { return Ok(()) };
        if lease.renew().await? {
            Ok(())
        } else {
            Err(GuardError::Lost(LeaseLost {
                epoch: lease.epoch,
                before: before.to_string(),
            }))
        }
    }
}

/// Why a guarded step may not go on.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Lost(#[from] LeaseLost),
    /// The store could not be asked: not knowing is not holding.
    #[error("could not check the scheduler's lease: {0}")]
    Store(#[from] WarehouseError),
}

/// How long a pipeline's run lease lasts without a heartbeat. Heartbeats come every third of
/// it, so a holder on another host that died is replaced within a minute.
pub const RUN_LEASE_SECONDS: u64 = 60;

/// A pipeline run's lease, renewed in the background while the run works. A run that loses
/// it (another process took it after missed heartbeats) sees `lost()` before its next commit.
pub struct RunLease {
    lease: Arc<Lease>,
    lost: Arc<AtomicBool>,
    beats: tokio::task::JoinHandle<()>,
}

/// A second run of the same pipeline, refused while the first lives.
#[derive(Debug, thiserror::Error)]
#[error("pipeline `{pipeline}` is being run by {holder}; this run did nothing. Wait for it to end (its lease lapses {seconds_left} s after its last heartbeat if it died on another host) and run again")]
pub struct Busy {
    pub pipeline: String,
    pub holder: String,
    pub seconds_left: i64,
}

impl RunLease {
    /// Takes pipeline `pipeline`'s lease for run `run_id`, or says who holds it.
    pub async fn take(
        project_root: &std::path::Path,
        warehouse_url: &str,
        pipeline: &str,
        run_id: &str,
    ) -> Result<Result<RunLease, Busy>, WarehouseError> {
        let holder = format!("parstat run {run_id}");
        let lease = match Lease::acquire(
            project_root,
            warehouse_url,
            &format!("pipeline-{pipeline}"),
            &holder,
            RUN_LEASE_SECONDS,
        )
        .await?
        {
            Ok(l) => Arc::new(l),
            Err(held) => {
                return Ok(Err(Busy {
                    pipeline: pipeline.to_string(),
                    holder: held.holder,
                    seconds_left: held.seconds_left,
                }))
            }
        };
        let lost = Arc::new(AtomicBool::new(false));
        let beats = {
            let (lease, lost) = (lease.clone(), lost.clone());
            tokio::spawn(async move {
                let every = std::time::Duration::from_secs((RUN_LEASE_SECONDS / 3).max(1));
                loop {
                    tokio::time::sleep(every).await;
                    match lease.renew().await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "could not renew the run's lease"),
                    }
                }
            })
        };
        Ok(Ok(RunLease { lease, lost, beats }))
    }

    /// Whether the lease is still this run's, asked of the store now (and renewed): a run
    /// checks before each commit, so that one paused past its lease (a stopped process, a
    /// suspended machine) commits nothing once another holder took over.
    pub async fn still_held(&self) -> Result<bool, WarehouseError> {
        if self.lost.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let held = self.lease.renew().await?;
        if !held {
            self.lost.store(true, Ordering::SeqCst);
        }
        Ok(held)
    }

    /// Gives the lease up, so that the next run need not wait.
    pub async fn release(self) {
        self.beats.abort();
        if let Err(e) = self.lease.release().await {
            tracing::warn!(error = %e, "could not release the run's lease; it lapses by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_run_is_refused_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLease::take(dir.path(), "warehouse", "dossier", "a")
            .await
            .unwrap()
            .expect("the first run takes the lease");
        let busy = match RunLease::take(dir.path(), "warehouse", "dossier", "b")
            .await
            .unwrap()
        {
            Ok(_) => panic!("a second run took a held lease"),
            Err(b) => b,
        };
        assert!(busy.holder.contains("parstat run a"), "{}", busy.holder);
        assert!(busy.to_string().contains("is being run by"), "{busy}");
        // Another pipeline's lease is independent.
        let other = RunLease::take(dir.path(), "warehouse", "rating", "c")
            .await
            .unwrap();
        assert!(other.is_ok());
        first.release().await;
        let again = RunLease::take(dir.path(), "warehouse", "dossier", "d")
            .await
            .unwrap();
        assert!(again.is_ok(), "the released lease is taken again");
    }

    /// An object store that takes every write as an overwrite: an S3 server that ignores
    /// `If-None-Match`.
    #[derive(Debug)]
    struct IgnoresConditions(object_store::memory::InMemory);

    impl std::fmt::Display for IgnoresConditions {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "IgnoresConditions")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for IgnoresConditions {
        async fn put_opts(
            &self,
            location: &StorePath,
            payload: PutPayload,
            _opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.0
                .put_opts(location, payload, PutOptions::default())
                .await
        }
        async fn put_multipart_opts(
            &self,
            location: &StorePath,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &StorePath,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures_util::stream::BoxStream<'static, object_store::Result<StorePath>>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<StorePath>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&StorePath>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&StorePath>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &StorePath,
            to: &StorePath,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_store_that_ignores_conditional_writes_is_refused() {
        let bad = IgnoresConditions(object_store::memory::InMemory::new());
        let e = require_exclusion(&bad, &StorePath::from("_lease"))
            .await
            .expect_err("a store without exclusion is refused");
        assert!(e.to_string().contains("ignores conditional writes"), "{e}");
        assert!(e.to_string().contains("[warehouse] url"), "{e}");
        // Nothing of the probe is left behind.
        let left: Vec<_> = bad.list(None).try_collect().await.unwrap();
        assert!(left.is_empty(), "{left:?}");
        let good = object_store::memory::InMemory::new();
        require_exclusion(&good, &StorePath::from("_lease"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_holder_whose_process_is_gone_is_replaced_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, base) =
            crate::warehouse::object_store_at(dir.path(), "warehouse", "_lease").unwrap();
        let lease_dir = base.join("pipeline-dossier");
        // A beat of a process that no longer exists on this host, fresh by its time.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let beat = Beat {
            pid: Some(dead),
            pid_start: Some(1),
            ..Beat::new("parstat run dead", false, Utc::now())
        };
        store
            .put(
                &epoch_file(&lease_dir, 0),
                PutPayload::from(serde_json::to_vec(&beat).unwrap()),
            )
            .await
            .unwrap();
        let taken = RunLease::take(dir.path(), "warehouse", "dossier", "next")
            .await
            .unwrap()
            .expect("a dead holder's lease is taken");
        assert_eq!(taken.lease.epoch, 1);
        // A live holder of this host (this very process) is respected.
        let refused = RunLease::take(dir.path(), "warehouse", "dossier", "third")
            .await
            .unwrap();
        assert!(refused.is_err());
    }
}
