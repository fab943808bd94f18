//! Report SQL on a Ballista cluster: the client session that sends plans to the scheduler, and
//! the scheduler and executor processes themselves, configured with parstat's codecs so that
//! they run parstat's functions and read the warehouse's pinned file lists.

pub mod codec;
pub mod plan;
pub mod snapshot;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::GetJobStatusParams;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

use codec::{LogicalCodec, PhysicalCodec};

/// Executors ask for tasks when they have a free slot. With Ballista 55's default (the
/// scheduler pushes tasks and counts free slots itself), the slots of tasks cancelled when an
/// executor is lost are never given back: seen here, the surviving executor got no task again
/// and every later job waited forever.
const POLICY: TaskSchedulingPolicy = TaskSchedulingPolicy::PullStaged;

/// How long a call to the scheduler (a ping, a cancel) may take.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The scheduler's host and port, from `df://HOST:PORT`.
pub fn host_port(scheduler: &str) -> std::result::Result<(String, u16), String> {
    crate::config::settings::check_scheduler_url(scheduler)?;
    let url = Url::parse(scheduler).map_err(|e| e.to_string())?;
    Ok((
        url.host_str().unwrap_or_default().to_string(),
        url.port().unwrap_or(50050),
    ))
}

/// Runs `call` against the scheduler at `scheduler`, within [`PING_TIMEOUT`].
async fn with_scheduler<T, F, Fut>(scheduler: &str, call: F) -> std::result::Result<T, String>
where
    F: FnOnce(SchedulerGrpcClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    let (host, port) = host_port(scheduler)?;
    let run = async {
        let client = SchedulerGrpcClient::connect(format!("http://{host}:{port}"))
            .await
            .map_err(|e| crate::error::report(&e))?;
        call(client).await.map_err(|e| e.message().to_string())
    };
    match tokio::time::timeout(PING_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", PING_TIMEOUT.as_secs())),
    }
}

/// Whether the scheduler at `scheduler` answers a status request.
pub async fn ping(scheduler: &str) -> std::result::Result<(), String> {
    with_scheduler(scheduler, |mut client| async move {
        client
            .get_job_status(GetJobStatusParams {
                job_id: "parstat-ping".into(),
            })
            .await
    })
    .await
    .map(drop)
    .map_err(|e| format!("the Ballista scheduler at {scheduler} does not answer: {e}"))
}

/// A session whose queries run on the cluster behind `scheduler`, with `config` and
/// parstat's codecs. The scheduler is asked first, so that an unreachable one is an error at
/// once, naming it, not a hung query.
pub async fn remote_context(scheduler: &str, config: SessionConfig) -> Result<SessionContext> {
    ping(scheduler).await.map_err(|e| {
        DataFusionError::External(
            (e + "; start it with `parstat cluster scheduler`, or fix `[engine] scheduler` in parstat.toml").into(),
        )
    })?;
    // Dynamic filters link operators of one process (a TopK's bound feeds its scan); sent to
    // executors, the copies are out of step: DataFusion 55's TopK then drops rows (seen here
    // as an empty result under ORDER BY). The cluster plans without them.
    let mut config = config;
    for key in [
        "datafusion.optimizer.enable_dynamic_filter_pushdown",
        "datafusion.optimizer.enable_topk_dynamic_filter_pushdown",
        "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
        "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown",
    ] {
        config = config.set_bool(key, false);
    }
    let config = config
        .upgrade_for_ballista()
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    SessionContext::remote_with_state(scheduler, state).await
}

/// The object stores of a cluster process: local files, and any `s3://` bucket, opened on
/// first use with the `AWS_*` variables as the warehouse opens it.
#[derive(Debug, Default)]
struct WarehouseStores {
    inner: DefaultObjectStoreRegistry,
    opened: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl ObjectStoreRegistry for WarehouseStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if !matches!(url.scheme(), "s3" | "s3a") {
            return self.inner.get_store(url);
        }
        let key = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = opened.get(&key) {
            return Ok(s.clone());
        }
        let bucket = Url::parse(&key).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let store: Arc<dyn ObjectStore> = Arc::new(
            crate::warehouse::s3::client(&bucket, &HashMap::new())
                .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?,
        );
        opened.insert(key, store.clone());
        Ok(store)
    }
}

/// `parstat cluster scheduler`'s settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub bind: String,
    pub port: u16,
    pub external_host: Option<String>,
    /// An executor silent for this long is presumed dead and its tasks run elsewhere.
    pub executor_timeout_secs: u64,
    /// Attempts of one task before its job fails.
    pub task_max_failures: usize,
}

/// Runs a Ballista scheduler until the process is stopped.
pub async fn run_scheduler(o: SchedulerOptions) -> anyhow::Result<()> {
    let config = ballista_scheduler::config::SchedulerConfig {
        bind_host: o.bind.clone(),
        bind_port: o.port,
        external_host: o.external_host.clone().unwrap_or_else(|| o.bind.clone()),
        executor_timeout_seconds: o.executor_timeout_secs,
        expire_dead_executor_interval_seconds: (o.executor_timeout_secs / 3).clamp(1, 15),
        no_executors_grace_period_seconds: o.executor_timeout_secs,
        task_max_failures: o.task_max_failures,
        scheduling_policy: POLICY,
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        override_session_builder: Some(Arc::new(plan::session)),
        ..Default::default()
    };
    let addr: SocketAddr = format!("{}:{}", o.bind, o.port)
        .parse()
        .map_err(|e| anyhow::anyhow!("--bind {}: {e}", o.bind))?;
    let cluster = ballista_scheduler::cluster::BallistaCluster::new_from_config(&config).await?;
    tracing::info!("Ballista scheduler listening on df://{addr}");
    ballista_scheduler::scheduler_process::start_server(cluster, addr, Arc::new(config)).await?;
    Ok(())
}

/// `parstat cluster executor`'s settings.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler: String,
    pub bind: String,
    pub external_host: Option<String>,
    pub flight_port: u16,
    pub grpc_port: u16,
    pub vcores: Option<usize>,
    pub work_dir: Option<String>,
    pub memory_pool_mb: Option<u64>,
    pub heartbeat_secs: u64,
}

/// Runs a Ballista executor registered with the scheduler until the process is stopped.
pub async fn run_executor(o: ExecutorOptions) -> anyhow::Result<()> {
    let (scheduler_host, scheduler_port) = host_port(&o.scheduler).map_err(anyhow::Error::msg)?;
    crate::warehouse::s3::register();
    let stores = Arc::new(WarehouseStores::default());
    let work_dir = o.work_dir.clone();
    let runtime: ballista_core::RuntimeProducer = Arc::new(move |_| {
        let mut b = RuntimeEnvBuilder::new().with_object_store_registry(stores.clone());
        if let Some(dir) = &work_dir {
            b = b.with_temp_file_path(dir);
        }
        Ok(Arc::new(b.build()?))
    });
    let mut config = ballista_executor::executor_process::ExecutorProcessConfig {
        bind_host: o.bind.clone(),
        external_host: o.external_host.clone(),
        port: o.flight_port,
        grpc_port: o.grpc_port,
        scheduler_host,
        scheduler_port,
        work_dir: o.work_dir.clone(),
        memory_pool_size: o.memory_pool_mb.map(|mb| mb * 1024 * 1024),
        executor_heartbeat_interval_seconds: o.heartbeat_secs,
        override_runtime_producer: Some(runtime),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        task_scheduling_policy: POLICY,
        ..Default::default()
    };
    if let Some(v) = o.vcores {
        config.vcores = v;
    }
    tracing::info!(
        "Ballista executor on {}:{} for the scheduler at {}",
        o.bind,
        o.flight_port,
        o.scheduler
    );
    ballista_executor::executor_process::start_executor_process(Arc::new(config)).await?;
    Ok(())
}

/// Cancels the cluster job of `plan` (a query sent to the scheduler) and says what came of it.
pub async fn cancel(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    scheduler: &str,
) -> String {
    use ballista_core::execution_plans::DistributedQueryExec;
    use datafusion_proto::protobuf::LogicalPlanNode;
    let Some(q) = plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>() else {
        return "the job was not found in the plan".into();
    };
    let Some(job) = q.job_id() else {
        return "the job had not started".into();
    };
    let job_id = job.to_string();
    let cancelled = with_scheduler(scheduler, |mut client| async move {
        client
            .cancel_job(ballista_core::serde::protobuf::CancelJobParams { job_id })
            .await
    })
    .await;
    match cancelled {
        Ok(_) => format!("job {job} was cancelled"),
        Err(e) => format!("job {job} could not be cancelled: {e}"),
    }
}
