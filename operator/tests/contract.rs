//! Contract between operator and data plane: the configuration the operator renders for a
//! RealtimeCluster, given to the `realtime` binary on this host, starts a working gateway
//! against the local stack (`scripts/stack.sh`) once the cluster's topics exist, made
//! here by the KafkaTopic reconciler's own sync from the rendered KafkaTopic children (the
//! rendered configuration tells the data plane not to create them). Only the in-cluster
//! addresses (listen address, broker, database, Redis) are replaced by the local ones.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use realtime_operator::controller::kafka_topic::admin::RdAdmin;
use realtime_operator::controller::kafka_topic::sync;
use realtime_operator::crd::RealtimeCluster;
use realtime_operator::render;
use serde_json::json;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` (scripts/test.sh does both)")
    })
}

fn realtime_bin() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/realtime");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

fn example() -> RealtimeCluster {
    let mut rc: RealtimeCluster = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster",
        "metadata": {"name": "chat", "namespace": "tenants", "uid": "0000"},
        "spec": {
            "image": "realtime:test",
            "kafka": {"bootstrapServers": "kafka.kafka.svc:9092"},
            "mongodb": {"uriSecretRef": {"name": "m", "key": "uri"}, "database": "contract_test"},
            "redis": {"urlSecretRef": {"name": "r", "key": "url"}},
            "auth": {"jwtSecretRef": {"name": "j", "key": "secret"}, "issuer": "iss", "audience": "aud"},
        }
    }))
    .unwrap();
    rc.metadata.generation = Some(1);
    rc
}

#[test]
fn every_rendered_variable_is_a_flag_of_the_data_plane() {
    let help = Command::new(realtime_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let mut rc = example();
    rc.spec.auth.jwks_url = Some("https://id.example/jwks.json".into());
    let mut names: Vec<String> = render::config_data(&rc).into_keys().collect();
    names.extend(
        render::secret_env(&rc)
            .into_iter()
            .map(|(v, _)| v.to_owned()),
    );
    names.push("ROLE".into());
    for name in names {
        assert!(
            help.contains(&format!("[env: {name}")),
            "the data plane has no flag for {name}"
        );
    }
    // Every Deployment's ROLE is a role of the data plane.
    for component in render::Component::ALL {
        assert!(
            help.contains(&format!("- {}:", component.role())),
            "the data plane has no role {}",
            component.role()
        );
    }
}

#[test]
fn the_rendered_configuration_starts_a_ready_gateway() {
    let mut rc = example();
    let run = std::process::id();
    rc.spec.kafka.topics = serde_json::from_value(json!({
        "messages": format!("contract{run}.messages"),
        "persistenceEvents": format!("contract{run}.events"),
        "recordingEvents": format!("contract{run}.recordings"),
    }))
    .unwrap();
    // The operator's part: the cluster's topics, as its KafkaTopic children say.
    let admin = RdAdmin::new(&env("KAFKA_BROKERS")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for topic in render::topics(&rc) {
        let synced = runtime.block_on(sync::sync(&admin, &topic.spec));
        assert_eq!(synced.problem, None, "{}", topic.spec.topic_name);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(realtime_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in render::config_data(&rc) {
        cmd.env(k, v);
    }
    // What the Secrets and the cluster network would provide.
    cmd.env("MONGODB_URI", env("MONGODB_URI"))
        .env("REDIS_URL", env("REDIS_URL"))
        .env("JWT_SECRET", "contract-secret")
        .env("KAFKA_BROKERS", env("KAFKA_BROKERS"))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("ROLE", "gateway")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("realtime exited with {status} on the rendered configuration:\n{err}");
        }
        let answered = std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|mut s| {
                use std::io::{Read, Write};
                s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
                    .ok()?;
                let mut body = String::new();
                s.read_to_string(&mut body).ok()?;
                Some(body)
            });
        if let Some(body) =
            answered.filter(|b| b.starts_with("HTTP/1.0 200") || b.starts_with("HTTP/1.1 200"))
        {
            break body;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gateway not ready in 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.contains("\"kafka\":true"), "{ready}");
}
