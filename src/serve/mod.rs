//! The scheduler daemon (`parstat serve`): holds the warehouse lease so that one scheduler
//! runs at a time, applies each job's catch-up policy for schedules missed while it was down,
//! fires jobs on their cron schedules (tokio-cron-scheduler, project time zone) one at a time
//! through `jobs::scheduled`, retries a failed report later (telling the operators once) and
//! stops its job the moment its lease is lost. SIGTERM/SIGINT stop it gracefully. Under a
//! simulated clock (`clock`), the schedules fire as the test moves the clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::pipeline::{CatchUp, JobKind, Pipeline};
use crate::config::Project;
use crate::jobs::{self, Fired, JobError};
use crate::warehouse::lease::{Guard, Lease};

/// A job to run: its schedule fired at `at` (or a missed fire, on catch-up; or a retry).
#[derive(Debug, Clone)]
pub struct Fire {
    pub job: String,
    pub at: DateTime<Utc>,
}

type Running = tokio::task::JoinHandle<Result<Fired, JobError>>;

/// Runs until SIGTERM/SIGINT or until the lease is lost.
pub async fn serve(project: Project) -> anyhow::Result<()> {
    let holder = format!(
        "{}:{}:{}",
        crate::warehouse::lease::host_name(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut stop = Box::pin(shutdown_signal());
    let Some(lease) = wait_for_lease(&project, &holder, &mut stop).await? else {
        return Ok(());
    };
    // What is due up to this instant is the catch-up's; the schedules fire after it.
    let clock_seen = crate::clock::now();
    println!("serving: lease epoch {} held by {holder}", lease.epoch);
    tracing::info!(epoch = lease.epoch, "scheduler lease taken");
    let guard = Guard::of(lease.clone());

    let mut state = State::new(&project);
    state.queue.extend(catch_up(&project, clock_seen).await?);
    // `tx` lives until the daemon stops: with every sender gone, `rx` would never wait.
    let (tx, rx) = mpsc::unbounded_channel::<Fire>();
    let simulated = crate::clock::simulated();
    let mut sched = JobScheduler::new().await?;
    if !simulated {
        add_schedules(&project, &sched, &tx).await?;
        sched.start().await?;
    }

    let mut daemon = Daemon {
        project: &project,
        lease: lease.clone(),
        guard,
        state,
        simulated,
        clock_seen,
        idle_reported: None,
        running: None,
    };
    let result = daemon.run(&mut stop, rx).await;
    if !simulated {
        sched.shutdown().await?;
    }
    if result.is_ok() {
        lease.release().await?;
    }
    println!("stopped");
    result
}

/// Waits for the scheduler lease: a second scheduler runs nothing while the first lives.
/// `None` when stopped while waiting.
async fn wait_for_lease(
    project: &Project,
    holder: &str,
    stop: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> anyhow::Result<Option<Arc<Lease>>> {
    let cfg = project.settings.scheduler;
    loop {
        match Lease::acquire(
            &project.root,
            &project.settings.warehouse_url,
            "scheduler",
            holder,
            cfg.lease_seconds,
        )
        .await?
        {
            Ok(l) => return Ok(Some(Arc::new(l))),
            Err(held) => {
                tracing::info!(holder = %held.holder, seconds_left = held.seconds_left, "another scheduler holds the lease; waiting");
                println!("waiting: the lease is held by {}", held.holder);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs((cfg.lease_seconds / 3).max(1))) => {}
                    _ = &mut *stop => return Ok(None),
                }
            }
        }
    }
}

/// Registers each pipeline's cron schedule (project time zone), each fire sent to `tx`.
async fn add_schedules(
    project: &Project,
    sched: &JobScheduler,
    tx: &mpsc::UnboundedSender<Fire>,
) -> anyhow::Result<()> {
    for p in &project.pipelines {
        let Some(schedule) = &p.schedule else {
            continue;
        };
        let (tx, name) = (tx.clone(), p.name.clone());
        let job = Job::new_async_tz(schedule.as_str(), project.settings.timezone, move |_, _| {
            let (tx, name) = (tx.clone(), name.clone());
            Box::pin(async move {
                let _ = tx.send(Fire {
                    job: name,
                    at: Utc::now(),
                });
            })
        })?;
        sched.add(job).await?;
    }
    Ok(())
}

/// The daemon under its lease: runs the queued fires one at a time, renews the lease, and
/// follows the clock.
struct Daemon<'a> {
    project: &'a Project,
    lease: Arc<Lease>,
    guard: Guard,
    state: State,
    simulated: bool,
    /// The clock's last reading whose fires are queued (the simulated clock's).
    clock_seen: DateTime<Utc>,
    /// The simulated instant last reported idle, so that it is reported once.
    idle_reported: Option<DateTime<Utc>>,
    running: Option<(Running, Fire)>,
}

impl Daemon<'_> {
    /// The daemon's loop, until `stop` resolves (`Ok`) or the lease is lost (`Err`).
    async fn run(
        &mut self,
        stop: &mut (impl std::future::Future<Output = ()> + Unpin),
        mut rx: mpsc::UnboundedReceiver<Fire>,
    ) -> anyhow::Result<()> {
        let cfg = self.project.settings.scheduler;
        let mut renew = tokio::time::interval(Duration::from_secs((cfg.lease_seconds / 3).max(1)));
        let mut tick = tokio::time::interval(if self.simulated {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(1)
        });
        loop {
            if self.running.is_none() {
                self.start_next();
            }
            tokio::select! {
                _ = &mut *stop => {
                    self.stop().await;
                    return Ok(());
                }
                _ = renew.tick() => self.renew().await?,
                fire = rx.recv() => {
                    if let Some(fire) = fire {
                        self.state.queue.push_back(fire);
                    }
                }
                _ = tick.tick() => self.tick(),
                joined = async {
                    match self.running.as_mut() {
                        Some((task, _)) => task.await,
                        None => std::future::pending().await,
                    }
                } => self.joined(joined).await?,
            }
        }
    }

    /// Starts the next queued fire; with none, under the simulated clock, reports the daemon
    /// idle until its next wake.
    fn start_next(&mut self) {
        let project = self.project;
        if let Some(fire) = self.state.queue.pop_front() {
            let period = project
                .pipeline(&fire.job)
                .and_then(|p| jobs::due_period(project, p, fire.at))
                .map(|p| format!(" {}", p.label()))
                .unwrap_or_default();
            println!("running {}{period}", fire.job);
            let (p, g, f) = (project.clone(), self.guard.clone(), fire.clone());
            self.running = Some((
                tokio::spawn(async move { run_fire(&p, &f, &g).await }),
                fire,
            ));
        } else if self.simulated && self.idle_reported != Some(self.clock_seen) {
            crate::clock::report_idle(
                self.clock_seen,
                self.state.next_wake(project, self.clock_seen),
            );
            self.idle_reported = Some(self.clock_seen);
        }
    }

    /// On SIGTERM/SIGINT: no new jobs; the running one gets the grace period to finish.
    async fn stop(&mut self) {
        let cfg = self.project.settings.scheduler;
        if let Some((mut task, _)) = self.running.take() {
            tracing::info!(
                grace_seconds = cfg.grace_seconds,
                "stopping: letting the running job finish"
            );
            if tokio::time::timeout(Duration::from_secs(cfg.grace_seconds), &mut task)
                .await
                .is_err()
            {
                task.abort();
                tracing::warn!("the running job did not finish within the grace period and was stopped; its commits are atomic, so nothing is half-written");
            }
        } else {
            tracing::info!("stopping: no new jobs");
        }
    }

    /// Renews the lease; `Err` when another scheduler holds it now.
    async fn renew(&mut self) -> anyhow::Result<()> {
        let cfg = self.project.settings.scheduler;
        match self.lease.renew().await {
            Ok(true) => {}
            // Another scheduler holds the lease now: this one's job must not go on
            // beside it. It stops at its next commit or send, each of which asks the
            // lease first; cutting it off mid-send instead would leave a message sent
            // but not recorded as sent, which the new holder would send again.
            Ok(false) => {
                if let Some((mut task, fire)) = self.running.take() {
                    println!(
                        "lease lost: stopping {} at its next commit or send",
                        fire.job
                    );
                    if tokio::time::timeout(Duration::from_secs(cfg.grace_seconds), &mut task)
                        .await
                        .is_err()
                    {
                        task.abort();
                    }
                }
                return Err(anyhow::anyhow!(
                    "the lease was taken by another scheduler; this scheduler stops"
                ));
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the lease"),
        }
        Ok(())
    }

    /// Queues the fires the simulated clock has passed, and the retries now due.
    fn tick(&mut self) {
        let now = crate::clock::now();
        if self.simulated && now > self.clock_seen {
            self.state
                .queue
                .extend(fires_between(self.project, self.clock_seen, now));
            self.clock_seen = now;
        }
        self.state.due_retries(now);
    }

    /// Follows up the job that ended; `Err` when it found the lease lost.
    async fn joined(
        &mut self,
        joined: Result<Result<Fired, JobError>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let (_, fire) = self.running.take().expect("a job was running");
        match joined {
            Ok(outcome) => self.state.finished(self.project, &fire, outcome).await,
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                let failure = anyhow::anyhow!("job {} stopped: {e}", fire.job);
                tracing::error!(error = %failure, "job task failed");
            }
        }
        match self.state.lost.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The daemon's book-keeping: fires waiting to run, reports to retry, who was told.
struct State {
    queue: VecDeque<Fire>,
    /// Reports to try again, one per (job, period), and when.
    retries: HashMap<(String, String), (DateTime<Utc>, Fire)>,
    /// (job, period) → when it first failed: bounds its retries, and the operators hear of
    /// it once.
    failing: HashMap<(String, String), DateTime<Utc>>,
    retry_every: chrono::Duration,
    retry_for: chrono::Duration,
    /// Set when a job found the lease lost: the daemon stops.
    lost: Option<anyhow::Error>,
}

impl State {
    fn new(project: &Project) -> State {
        let cfg = project.settings.scheduler;
        State {
            queue: VecDeque::new(),
            retries: HashMap::new(),
            failing: HashMap::new(),
            retry_every: chrono::Duration::minutes(cfg.retry_minutes as i64),
            retry_for: chrono::Duration::hours(cfg.retry_hours as i64),
            lost: None,
        }
    }

    fn due_retries(&mut self, now: DateTime<Utc>) {
        let mut due: Vec<(DateTime<Utc>, Fire)> = Vec::new();
        self.retries.retain(|_, (when, fire)| {
            let keep = *when > now;
            if !keep {
                due.push((*when, fire.clone()));
            }
            keep
        });
        due.sort_by_key(|d| d.0);
        for (_, fire) in due {
            tracing::info!(job = %fire.job, "retrying");
            self.queue.push_back(fire);
        }
    }

    /// The next instant with something to do: a schedule's next fire or a retry.
    fn next_wake(&self, project: &Project, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = project.settings.timezone;
        let next_fire = project
            .pipelines
            .iter()
            .filter_map(|p| p.schedule.as_deref())
            .filter_map(|s| {
                let cron = crate::config::pipeline::parse_schedule(s).ok()?;
                cron.find_next_occurrence(&now.with_timezone(&tz), false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            })
            .min();
        let next_retry = self.retries.values().map(|r| r.0).min();
        next_fire.into_iter().chain(next_retry).min()
    }

    /// Prints, records and follows up a fire's outcome.
    async fn finished(&mut self, project: &Project, fire: &Fire, outcome: Result<Fired, JobError>) {
        let p = match project.pipeline(&fire.job) {
            Some(p) => p,
            None => return,
        };
        let period = jobs::due_period(project, p, fire.at);
        let key = (
            p.name.clone(),
            period.map(|x| x.label()).unwrap_or_default(),
        );
        match outcome {
            Ok(fired) => self.succeeded(project, p, &key, &fired).await,
            Err(e) => self.failed(project, p, fire, &key, e).await,
        }
    }

    /// A fire that did its work: printed, and its period's retries and failure forgotten.
    async fn succeeded(
        &mut self,
        project: &Project,
        p: &Pipeline,
        key: &(String, String),
        fired: &Fired,
    ) {
        print_fired(&p.name, fired);
        self.retries.remove(key);
        if matches!(fired, Fired::Reported { .. }) {
            forget_told(project, key).await;
        }
        if self.failing.remove(key).is_some() {
            tracing::info!(job = %p.name, period = %key.1, "succeeded after earlier failures");
        }
    }

    /// A fire that failed after its immediate retries: printed and logged, a report retried
    /// later, and the operators told (once per period for a report).
    async fn failed(
        &mut self,
        project: &Project,
        p: &Pipeline,
        fire: &Fire,
        key: &(String, String),
        e: JobError,
    ) {
        if e.lease_lost() {
            self.lost = Some(anyhow::anyhow!("{e}"));
            return;
        }
        let shown = crate::error::report(&e);
        println!("failed: {shown}");
        tracing::error!(job = %p.name, error = %shown, "job failed after its retries");
        let now = crate::clock::now();
        // Stale data is not retried at once (its extracts were just run for it).
        let attempts = if matches!(e, JobError::Stale { .. }) {
            1
        } else {
            p.retries + 1
        };
        let tz = project.settings.timezone;
        let mut text = format!(
            "Công việc `{}`, kỳ {} (lịch {}), thất bại sau {attempts} lần thử.\n\nLỗi:\n{shown}\n",
            p.name,
            if key.1.is_empty() { "—" } else { &key.1 },
            fire.at.with_timezone(&tz).format("%H:%M:%S %d/%m/%Y"),
        );
        if let JobKind::Report(_) = p.job {
            match self.retry_later(project, p, fire, key, now).await {
                Some(retries) => text.push_str(&retries),
                None => return,
            }
        }
        text.push_str(&format!(
            "\nCuối nhật ký:\n{}\n\nXem `parstat runs list --job {}`.\n",
            crate::logtail::last(40).join("\n"),
            p.name
        ));
        let subject = format!("[parstat] Công việc thất bại: {}", p.name);
        crate::deliver::alert(project, &subject, &text).await;
    }

    /// Schedules a failed report's next try while its retry window lasts. The operators'
    /// words about the retries, or `None` when they are not to be told (again).
    async fn retry_later(
        &mut self,
        project: &Project,
        p: &Pipeline,
        fire: &Fire,
        key: &(String, String),
        now: DateTime<Utc>,
    ) -> Option<String> {
        let tz = project.settings.timezone;
        let first = *self.failing.entry(key.clone()).or_insert(now);
        let again = now + self.retry_every;
        if again <= first + self.retry_for {
            self.retries.insert(key.clone(), (again, fire.clone()));
            if first != now {
                // The operators were told at the first failure; the retries go on quietly.
                tracing::info!(job = %p.name, period = %key.1, at = %again, "will retry");
                return None;
            }
            if !first_to_tell(project, key).await {
                tracing::info!(job = %p.name, period = %key.1, "the operators were told of this failure by an earlier scheduler; will retry");
                return None;
            }
            Some(format!(
                "\nparstat thử lại mỗi {} phút, đến {}; chỉ báo lại nếu vẫn thất bại khi hết hạn.\n",
                self.retry_every.num_minutes(),
                (first + self.retry_for).with_timezone(&tz).format("%H:%M %d/%m/%Y"),
            ))
        } else {
            self.failing.remove(key);
            Some(format!(
                "\nparstat đã thử lại đến hết hạn ({} giờ) và dừng. Chạy lại: `parstat run --period {}`.\n",
                self.retry_for.num_hours(),
                key.1
            ))
        }
    }
}

/// Prints what a fire that succeeded did (an `AlreadyDone` only goes to the log).
fn print_fired(name: &str, fired: &Fired) {
    match fired {
        Fired::Extracted(s) => println!("{}: {} rows written", name, s.rows_written),
        Fired::Reported {
            period,
            extracted,
            outcome,
        } => println!(
            "{} {}: sent to {} of {} recipients (the others had it){}",
            name,
            period.label(),
            outcome
                .delivered
                .iter()
                .filter(|d| d.outcome == crate::deliver::ledger::Outcome::Sent)
                .count(),
            outcome.delivered.len(),
            if extracted.is_empty() {
                String::new()
            } else {
                format!(" (after extracting {})", extracted.join(", "))
            }
        ),
        Fired::AlreadyDone { period, run_id } => {
            tracing::info!(job = %name, period = %period.label(), run_id, "already done");
        }
    }
}

/// Where the mark that the operators were told of (job, period) failing lives.
fn told_mark(
    project: &Project,
    key: &(String, String),
) -> Option<(Arc<dyn object_store::ObjectStore>, object_store::path::Path)> {
    let (store, dir) = crate::warehouse::object_store_at(
        &project.root,
        &project.settings.warehouse_url,
        "_alerts",
    )
    .ok()?;
    Some((store, dir.join(format!("{}.{}.json", key.0, key.1))))
}

/// Marks (job, period) as told to the operators, create-if-absent: true when this call made
/// the mark, false when it was there, so that a restarted or second scheduler does not tell
/// them again. When the store cannot say, they are told.
async fn first_to_tell(project: &Project, key: &(String, String)) -> bool {
    use object_store::{PutMode, PutOptions, PutPayload};
    let Some((store, path)) = told_mark(project, key) else {
        return true;
    };
    let body = PutPayload::from(crate::clock::now().to_rfc3339().into_bytes());
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(&path, body, create).await {
        Err(object_store::Error::AlreadyExists { .. }) => false,
        Err(e) => {
            tracing::warn!(error = %e, "could not mark the operators as told; telling them");
            true
        }
        Ok(_) => true,
    }
}

/// Clears the mark once the period succeeded: a later failure of it is news again.
async fn forget_told(project: &Project, key: &(String, String)) {
    use object_store::ObjectStoreExt;
    if let Some((store, path)) = told_mark(project, key) {
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "could not clear the operators' alert mark"),
        }
    }
}

/// One fire with its immediate retries (`retries` in the pipeline file, 1 s, 2 s, ...); a
/// report whose data is stale is not retried at once: its extracts were just run for it.
async fn run_fire(project: &Project, fire: &Fire, guard: &Guard) -> Result<Fired, JobError> {
    let p = project
        .pipeline(&fire.job)
        .expect("fires name the project's pipelines");
    let attempts = p.retries + 1;
    let mut delay = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match jobs::scheduled(project, p, fire.at, guard).await {
            Err(e)
                if attempt < attempts
                    && !matches!(e, JobError::Stale { .. })
                    && !e.lease_lost() =>
            {
                let shown = crate::error::report(&e);
                tracing::warn!(job = %p.name, attempt, error = %shown, "job failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed here, at once, not when the
/// future is first polled: a signal during start-up (catch-up) must not kill the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// Every schedule's fires in (`from`, `to`], in time order (the simulated clock's ticks).
fn fires_between(project: &Project, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Fire> {
    let mut out: Vec<Fire> = project
        .pipelines
        .iter()
        .filter_map(|p| Some((p, p.schedule.as_deref()?)))
        .flat_map(|(p, s)| {
            missed_fires(s, project.settings.timezone, from, to)
                .into_iter()
                .map(|at| Fire {
                    job: p.name.clone(),
                    at,
                })
        })
        .collect();
    out.sort_by_key(|f| f.at);
    out
}

/// The fires each scheduled job's catch-up policy asks for, for the schedules missed since
/// its last run; and, for a report, the latest fire's period when it has not succeeded (a
/// daemon that stopped or lost its lease during it, or a first start after it was due).
async fn catch_up(project: &Project, now: DateTime<Utc>) -> anyhow::Result<Vec<Fire>> {
    let history = jobs::history(project).await?;
    let tz = project.settings.timezone;
    let mut out = Vec::new();
    for p in &project.pipelines {
        let Some(schedule) = &p.schedule else {
            continue;
        };
        let last = history
            .iter()
            .find(|r| r.job == p.name)
            .and_then(|r| DateTime::from_timestamp_micros(r.started_at));
        let missed = match last {
            Some(last) => missed_fires(schedule, tz, last, now),
            None => vec![],
        };
        let mut chosen: Vec<DateTime<Utc>> = match (p.catch_up, &p.job) {
            (CatchUp::None, _) => vec![],
            _ if missed.is_empty() => vec![],
            // An extract is incremental: one run catches up everything.
            (_, JobKind::Extract(_)) | (CatchUp::Latest, _) => {
                vec![*missed.last().expect("non-empty")]
            }
            (CatchUp::All, _) => missed.clone(),
        };
        if p.as_report().is_some() && p.catch_up != CatchUp::None {
            let latest = last_fire(schedule, tz, now);
            if let Some(at) = latest {
                let period = jobs::due_period(project, p, at).expect("a report");
                let same = |t: &DateTime<Utc>| jobs::due_period(project, p, *t) == Some(period);
                if jobs::succeeded(&history, &p.name, &period).is_none() && !chosen.iter().any(same)
                {
                    chosen.push(at);
                }
            }
        }
        if missed.is_empty() && chosen.is_empty() {
            continue;
        }
        tracing::info!(job = %p.name, missed = missed.len(), policy = ?p.catch_up, running = chosen.len(), "catch-up");
        println!(
            "catch-up {}: {} missed, policy {:?}, running {}",
            p.name,
            missed.len(),
            p.catch_up,
            chosen.len()
        );
        out.extend(chosen.into_iter().map(|at| Fire {
            job: p.name.clone(),
            at,
        }));
    }
    Ok(out)
}

/// The schedule's last fire time at or before `at`.
fn last_fire(schedule: &str, tz: chrono_tz::Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = crate::config::pipeline::parse_schedule(schedule).ok()?;
    cron.find_previous_occurrence(&at.with_timezone(&tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The schedule's fire times after `from` up to `to`.
pub fn missed_fires(
    schedule: &str,
    tz: chrono_tz::Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let Ok(cron) = crate::config::pipeline::parse_schedule(schedule) else {
        return vec![];
    };
    let mut out = Vec::new();
    let mut t = from.with_timezone(&tz);
    while let Ok(next) = cron.find_next_occurrence(&t, false) {
        if next.with_timezone(&Utc) > to || out.len() >= 10_000 {
            break;
        }
        out.push(next.with_timezone(&Utc));
        t = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn missed_fires_are_the_schedule_in_the_project_zone_after_from_up_to_to() {
        let tz = chrono_tz::Asia::Ho_Chi_Minh;
        // 07:00 on the 3rd in Hà Tĩnh is 00:00 UTC.
        let fires = missed_fires(
            "0 0 7 3 * *",
            tz,
            at("2026-11-03T00:00:00Z"),
            at("2027-02-03T00:00:00Z"),
        );
        assert_eq!(
            fires,
            vec![
                at("2026-12-03T00:00:00Z"),
                at("2027-01-03T00:00:00Z"),
                at("2027-02-03T00:00:00Z")
            ]
        );
        // Mondays at 03:00 between Tuesday 1 and Thursday 3 December 2026: none.
        assert!(missed_fires(
            "0 0 3 * * 1",
            tz,
            at("2026-11-30T20:00:00Z"),
            at("2026-12-03T00:00:00Z")
        )
        .is_empty());
        // The last fire is found however often the schedule fires.
        assert_eq!(
            last_fire("*/2 * * * * *", tz, at("2026-12-03T00:00:01Z")),
            Some(at("2026-12-03T00:00:00Z"))
        );
        assert_eq!(
            last_fire("0 0 7 3 * *", tz, at("2026-12-02T00:00:00Z")),
            Some(at("2026-11-03T00:00:00Z"))
        );
        assert!(missed_fires(
            "not a schedule",
            tz,
            at("2026-11-30T20:00:00Z"),
            at("2026-12-03T00:00:00Z")
        )
        .is_empty());
    }
}
