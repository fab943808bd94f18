//! `parstat cluster scheduler|executor`: Ballista's own scheduler and executor, started from
//! this binary with parstat's codecs, so an operator needs nothing else to run the cluster.

use clap::{Args, Subcommand};

use super::Failure;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub role: Role,
}

#[derive(Subcommand, Debug)]
pub enum Role {
    /// The scheduler that clients (`[engine] kind = "ballista"`) send queries to.
    Scheduler {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
        bind: String,
        /// gRPC port of the scheduler (clients use df://HOST:PORT).
        #[arg(long, default_value_t = 50050)]
        port: u16,
        /// The host executors and clients reach this scheduler at, when not the bind address.
        #[arg(long, value_name = "HOST")]
        external_host: Option<String>,
        /// An executor silent for this long is presumed dead and its tasks run elsewhere.
        #[arg(long, default_value_t = 180, value_name = "SECONDS")]
        executor_timeout_secs: u64,
        /// Attempts of one task before its query fails.
        #[arg(long, default_value_t = 4, value_name = "N")]
        task_max_failures: usize,
    },
    /// An executor, registered with the scheduler, that runs query tasks.
    Executor {
        /// The scheduler: df://HOST:PORT.
        #[arg(long, default_value = "df://127.0.0.1:50050", value_name = "URL")]
        scheduler: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
        bind: String,
        /// The host other executors and the scheduler reach this one at.
        #[arg(long, value_name = "HOST")]
        external_host: Option<String>,
        /// Port of the Arrow Flight service that serves this executor's shuffle data.
        #[arg(long, default_value_t = 50051)]
        flight_port: u16,
        /// Port of the executor's gRPC service.
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks run at once (the machine's cores when not given).
        #[arg(long, value_name = "N")]
        vcores: Option<usize>,
        /// Folder for shuffle files and spills.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<String>,
        /// Memory for query operators, in MiB, shared by the tasks; beyond it they spill.
        #[arg(long, value_name = "MIB")]
        memory_pool_mb: Option<u64>,
        /// How often the executor tells the scheduler it is alive.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        heartbeat_secs: u64,
    },
}

pub async fn run(args: ClusterArgs) -> Result<(), Failure> {
    #[cfg(feature = "cluster")]
    {
        use crate::cluster;
        match args.role {
            Role::Scheduler {
                bind,
                port,
                external_host,
                executor_timeout_secs,
                task_max_failures,
            } => cluster::run_scheduler(cluster::SchedulerOptions {
                bind,
                port,
                external_host,
                executor_timeout_secs,
                task_max_failures,
            })
            .await
            .map_err(Failure::failed),
            Role::Executor {
                scheduler,
                bind,
                external_host,
                flight_port,
                grpc_port,
                vcores,
                work_dir,
                memory_pool_mb,
                heartbeat_secs,
            } => cluster::run_executor(cluster::ExecutorOptions {
                scheduler,
                bind,
                external_host,
                flight_port,
                grpc_port,
                vcores,
                work_dir,
                memory_pool_mb,
                heartbeat_secs,
            })
            .await
            .map_err(Failure::failed),
        }
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = args;
        Err(Failure::usage(anyhow::anyhow!(
            "this parstat was built without Ballista; build it with `cargo build --release --features cluster`"
        )))
    }
}
