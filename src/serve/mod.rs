//! The scheduler daemon (`parstat serve`): holds the warehouse lease so that one scheduler
//! runs at a time, applies each job's catch-up policy for schedules missed while it was down,
//! fires jobs on their cron schedules (tokio-cron-scheduler, project time zone) one at a time,
//! retries failures with backoff and emails the operators when a job still fails; a report
//! waits for the extracts it needs to be fresh. SIGTERM/SIGINT stop it gracefully.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::pipeline::{CatchUp, JobKind, PeriodChoice, Pipeline};
use crate::config::Project;
use crate::extract::{self, ExtractOptions};
use crate::jobs::backfill;
use crate::query::Period;
use crate::warehouse::lease::Lease;
use crate::warehouse::runs::{self, RunRecord};
use crate::warehouse::Warehouse;

/// A job to run: its schedule fired at `at` (or a missed fire, on catch-up).
#[derive(Debug, Clone)]
pub struct Fire {
    pub job: String,
    pub at: DateTime<Utc>,
    pub catch_up: bool,
}

/// Runs until SIGTERM/SIGINT or until the lease is lost.
pub async fn serve(project: Project) -> anyhow::Result<()> {
    let cfg = project.settings.scheduler;
    let holder = format!(
        "{}:{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut stop = Box::pin(shutdown_signal());
    // Wait for the lease: a second scheduler runs nothing while the first lives.
    let lease = loop {
        match Lease::acquire(
            &project.root,
            &project.settings.warehouse_url,
            "scheduler",
            &holder,
            cfg.lease_seconds,
        )
        .await?
        {
            Ok(l) => break l,
            Err(held) => {
                tracing::info!(holder = %held.holder, seconds_left = held.seconds_left, "another scheduler holds the lease; waiting");
                println!("waiting: the lease is held by {}", held.holder);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs((cfg.lease_seconds / 3).max(1))) => {}
                    _ = &mut stop => return Ok(()),
                }
            }
        }
    };
    println!("serving: lease epoch {} held by {holder}", lease.epoch);
    tracing::info!(epoch = lease.epoch, "scheduler lease taken");

    let (tx, mut rx) = mpsc::unbounded_channel::<Fire>();
    catch_up(&project, &tx).await?;
    let mut sched = JobScheduler::new().await?;
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
                    catch_up: false,
                });
            })
        })?;
        sched.add(job).await?;
    }
    sched.start().await?;

    let mut renew = tokio::time::interval(Duration::from_secs((cfg.lease_seconds / 3).max(1)));
    let result = loop {
        tokio::select! {
            _ = &mut stop => {
                tracing::info!("stopping: no new jobs");
                break Ok(());
            }
            _ = renew.tick() => {
                match lease.renew().await {
                    Ok(true) => {}
                    Ok(false) => break Err(anyhow::anyhow!("the lease was taken by another scheduler; stopping")),
                    Err(e) => tracing::warn!(error = %e, "could not renew the lease"),
                }
            }
            fire = rx.recv() => {
                let Some(fire) = fire else { break Ok(()) };
                // The job runs in its own task so that a stop signal is seen while it runs;
                // the lease keeps being renewed meanwhile.
                let p = project.clone();
                let mut task = tokio::spawn(async move { run_fire(&p, &fire).await });
                let mut lost = false;
                let stopped = loop {
                    tokio::select! {
                        _ = &mut task => break false,
                        _ = renew.tick() => {
                            match lease.renew().await {
                                Ok(true) => {}
                                // Another scheduler holds the lease now: this one's job must
                                // not go on beside it. Its commits are atomic; an extract
                                // also checks its own pipeline lease before each commit.
                                Ok(false) => {
                                    task.abort();
                                    lost = true;
                                    break false;
                                }
                                Err(e) => tracing::warn!(error = %e, "could not renew the lease"),
                            }
                        }
                        _ = &mut stop => break true,
                    }
                };
                if lost {
                    break Err(anyhow::anyhow!("the lease was taken by another scheduler while a job ran; the job was stopped, and this scheduler stops"));
                }
                if stopped {
                    tracing::info!(grace_seconds = cfg.grace_seconds, "stopping: letting the running job finish");
                    if tokio::time::timeout(Duration::from_secs(cfg.grace_seconds), &mut task).await.is_err() {
                        task.abort();
                        tracing::warn!("the running job did not finish within the grace period and was stopped; its commits are atomic, so nothing is half-written");
                    }
                    break Ok(());
                }
            }
        }
    };
    sched.shutdown().await?;
    if result.is_ok() {
        lease.release().await?;
    }
    println!("stopped");
    result
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

/// Applies each scheduled job's catch-up policy for the fires missed since its last run.
async fn catch_up(project: &Project, tx: &mpsc::UnboundedSender<Fire>) -> anyhow::Result<()> {
    let wh = Warehouse::new(&project.root, &project.settings.warehouse_url)?;
    let history = runs::all(&wh).await?;
    let now = Utc::now();
    for p in &project.pipelines {
        let Some(schedule) = &p.schedule else {
            continue;
        };
        let Some(last) = history
            .iter()
            .find(|r| r.job == p.name)
            .map(|r| r.started_at)
        else {
            tracing::info!(job = %p.name, "catch-up: no run recorded yet; waiting for the schedule");
            continue;
        };
        let last = DateTime::from_timestamp_micros(last).unwrap_or(now);
        let missed = missed_fires(schedule, project.settings.timezone, last, now);
        if missed.is_empty() {
            continue;
        }
        let chosen: Vec<DateTime<Utc>> = match (p.catch_up, &p.job) {
            (CatchUp::None, _) => vec![],
            // An extract is incremental: one run catches up everything.
            (_, JobKind::Extract(_)) | (CatchUp::Latest, _) => {
                vec![*missed.last().expect("non-empty")]
            }
            (CatchUp::All, _) => missed.clone(),
        };
        tracing::info!(job = %p.name, missed = missed.len(), policy = ?p.catch_up, running = chosen.len(), "catch-up");
        println!(
            "catch-up {}: {} missed, policy {:?}, running {}",
            p.name,
            missed.len(),
            p.catch_up,
            chosen.len()
        );
        for at in chosen {
            let _ = tx.send(Fire {
                job: p.name.clone(),
                at,
                catch_up: true,
            });
        }
    }
    Ok(())
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

/// Runs one fire with retries; a job that still fails is recorded and the operators told.
async fn run_fire(project: &Project, fire: &Fire) {
    let Some(p) = project.pipeline(&fire.job) else {
        return;
    };
    let attempts = p.retries + 1;
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=attempts {
        match run_once(project, p, fire).await {
            Ok(()) => return,
            Err(e) if attempt < attempts => {
                tracing::warn!(job = %p.name, attempt, error = %e, "job failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(job = %p.name, error = %e, "job failed after its retries");
                let subject = format!("[parstat] Công việc thất bại: {}", p.name);
                let period = match &p.job {
                    JobKind::Report(job) => {
                        let current =
                            Period::containing(fire.at, project.settings.timezone, job.period_rule);
                        match job.period {
                            PeriodChoice::PreviousMonth => current.previous().label(),
                            PeriodChoice::CurrentMonth => current.label(),
                        }
                    }
                    JobKind::Extract(_) => "—".into(),
                };
                let text = format!(
                    "Công việc `{}`, kỳ {period} (lịch {}), thất bại sau {attempts} lần thử.\n\nLỗi:\n{e}\n\nCuối nhật ký:\n{}\n\nXem `parstat runs list --job {}`.\n",
                    p.name,
                    fire.at.with_timezone(&project.settings.timezone).format("%H:%M:%S %d/%m/%Y"),
                    crate::logtail::last(40).join("\n"),
                    p.name
                );
                crate::deliver::alert(project, &subject, &text).await;
            }
        }
    }
}

async fn run_once(project: &Project, p: &Pipeline, fire: &Fire) -> Result<(), String> {
    match &p.job {
        JobKind::Extract(_) => {
            let started = Utc::now();
            let opts = ExtractOptions {
                full: false,
                progress: false,
                chunk_rows: 0,
            };
            let result = extract::run(project, p, &opts).await;
            crate::jobs::record_extract(project, &p.name, started, &result).await;
            result.map(|_| ()).map_err(|e| e.to_string())
        }
        JobKind::Report(job) => {
            let current = Period::containing(fire.at, project.settings.timezone, job.period_rule);
            let period = match job.period {
                PeriodChoice::PreviousMonth => current.previous(),
                PeriodChoice::CurrentMonth => current,
            };
            let wh = Warehouse::new(&project.root, &project.settings.warehouse_url)
                .map_err(|e| e.to_string())?;
            let history = runs::all(&wh).await.map_err(|e| e.to_string())?;
            if history
                .iter()
                .any(|r| r.job == p.name && r.period == period.label() && r.status == "succeeded")
            {
                tracing::info!(job = %p.name, period = %period.label(), "already done");
                return Ok(());
            }
            wait_for_fresh(project, p, &job.needs, period, fire.at).await?;
            backfill::run_one(project, p, period, true)
                .await
                .map(|_| ())
        }
    }
}

/// Waits until every dataset a report needs was extracted after its period ended (or after
/// the fire, for a period still running); past `[scheduler] wait_minutes`, fails.
async fn wait_for_fresh(
    project: &Project,
    p: &Pipeline,
    needs: &[String],
    period: Period,
    fired: DateTime<Utc>,
) -> Result<(), String> {
    let cfg = project.settings.scheduler;
    let (_, end) = period.bounds(project.settings.timezone);
    let since = end.min(fired).timestamp_micros();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.wait_minutes * 60);
    let wh = Warehouse::new(&project.root, &project.settings.warehouse_url)
        .map_err(|e| e.to_string())?;
    loop {
        let history = runs::all(&wh).await.map_err(|e| e.to_string())?;
        let stale: Vec<&String> = needs
            .iter()
            .filter(|d| {
                let Some(producer) = project.producer(d) else {
                    return false;
                };
                !history.iter().any(|r: &RunRecord| {
                    r.job == producer.name && r.status == "succeeded" && r.started_at >= since
                })
            })
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{} {}: data not fresh after {} minutes: {} not extracted since the period ended",
                p.name,
                period.label(),
                cfg.wait_minutes,
                stale
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        tracing::info!(job = %p.name, waiting_for = ?stale, "waiting for fresh data");
        tokio::time::sleep(Duration::from_secs(cfg.poll_seconds)).await;
    }
}
