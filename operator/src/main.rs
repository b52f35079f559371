//! `realtime-operator`: the control plane binary. Serves `/healthz`, `/readyz` and
//! `/metrics`, campaigns for the Lease (unless disabled) and runs the controllers while it
//! holds it; exits within seconds of SIGTERM or ctrl-c in every state.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::Parser;
use kube::runtime::events::Reporter;
use realtime_operator::leader::{
    DRAIN_TIMEOUT, LeaderExit, LeaseConfig, RELEASE_TIMEOUT, run_leader, run_until_drained,
};
use realtime_operator::metrics::Metrics;
use realtime_operator::run::run_controllers;
use tracing_subscriber::EnvFilter;

/// Realtime Operator: reconciles RealtimeCluster resources.
#[derive(Parser, Debug)]
#[command(name = "realtime-operator", version, about)]
struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:8080")]
    metrics_addr: SocketAddr,
    /// This replica's name: reported in Events and used as the lease holder identity.
    #[arg(long, env = "POD_NAME", default_value = "realtime-operator")]
    instance: String,
    /// Hold a Lease before reconciling, so that two replicas never both write.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (usually the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "realtime-operator")]
    lease_name: String,
    /// Seconds the Lease is valid without renewal (failover time).
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run());
    // Blocking work left behind (a DNS lookup of an unreachable API server, say) must not
    // hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let signal = futures::future::FutureExt::shared(Box::pin(shutdown()));
    tracing::info!(identity = %args.instance, "realtime-operator starting");
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::default();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // Ready while the API server answers; a standby replica is ready too.
        .route(
            "/readyz",
            get({
                let client = client.clone();
                move || async move {
                    match client.apiserver_version().await {
                        Ok(_) => (axum::http::StatusCode::OK, "ok"),
                        Err(_) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "API server unreachable",
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get({
                let metrics = metrics.clone();
                move || async move { metrics.render() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let reporter = Reporter {
        controller: "realtime-operator".into(),
        instance: Some(args.instance.clone()),
    };
    let work = async {
        if args.leader_election {
            let lease = LeaseConfig {
                namespace: args.lease_namespace,
                name: args.lease_name,
                identity: args.instance,
                duration_seconds: args.lease_duration_seconds,
            };
            run_leader(
                client,
                args.namespace,
                metrics,
                reporter,
                lease,
                signal.clone(),
            )
            .await
        } else {
            run_until_drained(
                run_controllers(client, args.namespace, metrics, reporter, signal.clone()),
                signal.clone(),
            )
            .await;
            Ok(LeaderExit::Shutdown)
        }
    };
    // `run_leader` bounds each of its waits; this bounds whatever else might not.
    let outcome = tokio::select! {
        outcome = work => outcome?,
        () = async {
            signal.clone().await;
            tokio::time::sleep(DRAIN_TIMEOUT + RELEASE_TIMEOUT + Duration::from_secs(1)).await;
        } => {
            tracing::warn!("shutdown took too long; exiting without waiting further");
            LeaderExit::Shutdown
        }
    };
    server.abort();
    match outcome {
        LeaderExit::Shutdown => {
            tracing::info!("shut down");
            Ok(())
        }
        LeaderExit::LostLease => {
            anyhow::bail!("lost the lease; exiting so that a restart campaigns again")
        }
    }
}

/// Resolves on SIGTERM or ctrl-c. The handlers are installed at once (not on first poll),
/// so a signal that comes early is not lost to the default action.
fn shutdown() -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (term, interrupt) => {
                tracing::warn!(
                    sigterm = term.is_ok(),
                    sigint = interrupt.is_ok(),
                    "cannot listen for shutdown signals; only a kill stops this process"
                );
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutdown requested");
    }
}
