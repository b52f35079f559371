use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use clap::Parser;
use kube::runtime::events::Reporter;
use realtime_operator::metrics::Metrics;
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
    /// Name reported in Events (usually the pod name).
    #[arg(long, env = "POD_NAME", default_value = "realtime-operator")]
    instance: String,
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
        .route("/readyz", get(|| async { "ok" }))
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
        instance: Some(args.instance),
    };
    realtime_operator::run::run_controllers(client, args.namespace, metrics, reporter, shutdown())
        .await;
    server.abort();
    Ok(())
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
