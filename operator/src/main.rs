use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use clap::Parser;
use kube::runtime::events::Reporter;
use realtime_operator::metrics::Metrics;
use realtime_operator::run::{LeaderExit, LeaseConfig, run_controllers, run_leader};
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
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
    let outcome = if args.leader_election {
        let lease = LeaseConfig {
            namespace: args.lease_namespace,
            name: args.lease_name,
            identity: args.instance,
            duration_seconds: args.lease_duration_seconds,
        };
        run_leader(client, args.namespace, metrics, reporter, lease, shutdown()).await?
    } else {
        run_controllers(client, args.namespace, metrics, reporter, shutdown()).await;
        LeaderExit::Shutdown
    };
    server.abort();
    match outcome {
        LeaderExit::Shutdown => Ok(()),
        LeaderExit::LostLease => {
            anyhow::bail!("lost the lease; exiting so that a restart campaigns again")
        }
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
