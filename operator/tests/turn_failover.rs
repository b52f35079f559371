//! Health-checked failover seen through the data plane: real coturn processes on
//! loopback, the TurnPool controller probing them, and a real `realtime` gateway following
//! the pool (`TURN_POOL`) with the data plane's own ServiceAccount token (from the
//! TokenRequest API), so the Role the operator renders is proven sufficient.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::token::{client_with_token, kubeconfig_file, service_account_token};
use common::turn::{apply_pool, condition, everything_written, rotate, secret_pair};
use common::{Env, eventually, minimal_cluster};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, Patch, PatchParams, PostParams};
use realtime_operator::crd::{RealtimeCluster, TurnPool};
use realtime_operator::render::turn_pool::ROTATED_AT_ANNOTATION;
use realtime_turn::probe;
use realtime_turn::testing::Coturn;
use serde_json::json;

/// When the pool's secret was last rotated (seconds since the epoch), from its Secret.
async fn rotated_at(env: &Env) -> i64 {
    let secret = env.api::<Secret>().get("edge-turn-secret").await.unwrap();
    secret.metadata.annotations.unwrap()[ROTATED_AT_ANNOTATION]
        .parse::<k8s_openapi::jiff::Timestamp>()
        .unwrap()
        .as_second()
}

/// Moves the recorded rotation time of the pool's Secret.
async fn set_rotated_at(env: &Env, seconds: i64) {
    let at = k8s_openapi::jiff::Timestamp::from_second(seconds)
        .unwrap()
        .to_string();
    env.api::<Secret>()
        .patch(
            "edge-turn-secret",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATED_AT_ANNOTATION: at}}})),
        )
        .await
        .unwrap();
}

/// Whether `secret` signed the TURN REST credential (`user`, `pass`).
fn verify(secret: &str, user: &str, pass: &str) -> Result<(), realtime_turn::credentials::Refusal> {
    realtime_turn::credentials::verify(
        &[secret.as_bytes()],
        user,
        pass,
        realtime_turn::credentials::now_unix(),
    )
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` (scripts/test.sh does both)")
    })
}

fn bin(name: &str) -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/debug")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// A gateway following the pool through the API, as a pod with `TURN_POOL` would.
struct Gateway {
    child: Child,
    url: String,
    token: String,
}

impl Gateway {
    /// Starts `realtime` as a gateway pod would: following `pool` through the API server
    /// with the identity in `kubeconfig` (the data plane's ServiceAccount token).
    async fn start(ns: &str, pool: &str, kubeconfig: &std::path::Path) -> Gateway {
        let port = realtime_turn::testing::free_port().unwrap();
        let secret = "turn-pool-test-jwt-secret";
        let child = Command::new(bin("realtime"))
            .env("ROLE", "gateway")
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("REDIS_URL", env_var("REDIS_URL"))
            .env("KAFKA_BROKERS", env_var("KAFKA_BROKERS"))
            .env("MONGODB_URI", env_var("MONGODB_URI"))
            .env("MONGODB_DATABASE", "turn_pool_test")
            .env("KAFKA_MESSAGE_TOPIC", "turn-pool-test.messages")
            .env("KAFKA_PERSISTENCE_TOPIC", "turn-pool-test.events")
            .env(
                "KAFKA_GROUP_PREFIX",
                format!("turn-pool-test-{}", std::process::id()),
            )
            .env("JWT_SECRET", secret)
            .env("TURN_POOL", pool)
            .env("TURN_POOL_NAMESPACE", ns)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = Command::new(bin("realtime-dev"))
            .args([
                "token",
                "--tenant",
                "t",
                "--user",
                "caller",
                "--jwt-secret",
                secret,
            ])
            .env_remove("JWT_ISSUER")
            .env_remove("JWT_AUDIENCE")
            .output()
            .unwrap();
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let url = format!("http://127.0.0.1:{port}");
        eventually("the gateway to listen", 30, || async {
            http_get(&format!("{url}/healthz"), None).await.map(|_| ())
        })
        .await;
        Gateway { child, url, token }
    }

    /// The gateway's answer to `GET /v1/ice-servers` (status, body).
    async fn ice(&self) -> Option<(u16, serde_json::Value)> {
        let (status, body) =
            http_get(&format!("{}/v1/ice-servers", self.url), Some(&self.token)).await?;
        Some((status, serde_json::from_str(&body).ok()?))
    }

    /// The TURN credential the gateway hands out now (username, password).
    async fn credential(&self) -> (String, String) {
        let (status, body) = self.ice().await.unwrap();
        assert_eq!(status, 200, "{body}");
        let server = &body["iceServers"][0];
        (
            server["username"].as_str().unwrap().to_owned(),
            server["credential"].as_str().unwrap().to_owned(),
        )
    }

    /// Ports of the TURN servers the gateway hands out now (empty when it answers 503).
    async fn ice_ports(&self) -> Option<Vec<u16>> {
        let (status, body) = self.ice().await?;
        if status == 503 {
            return Some(Vec::new());
        }
        Some(
            body["iceServers"]
                .as_array()?
                .iter()
                .filter_map(|s| s["urls"][0].as_str()?.rsplit(':').next()?.parse().ok())
                .collect(),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP/1.1 GET over TCP (status, body), to avoid a client dependency.
async fn http_get(url: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

#[tokio::test]
async fn a_failed_server_leaves_the_ice_list_within_the_bound_and_returns() {
    let env = Env::start("turn-failover").await;
    let mut servers: Vec<Coturn> = (0..3)
        .map(|_| Coturn::reserve("failover.test").unwrap())
        .collect();
    let ports: Vec<u16> = servers.iter().map(|c| c.port).collect();
    let (interval, failures) = (1u64, 2u64);
    apply_pool(
        &env,
        json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "edge"},
            "spec": {
                "servers": ports.iter().map(|p| json!({"host": "127.0.0.1", "port": p, "transports": ["udp", "tcp"]})).collect::<Vec<_>>(),
                "credentialTTLSeconds": 600,
                "healthCheck": {"intervalSeconds": interval, "timeoutSeconds": 1, "failureThreshold": failures, "successThreshold": 1},
            }
        }),
    )
    .await;
    // The servers accept the pool's secret, as an operator-managed or a configured
    // external server would.
    let pair = secret_pair(&env, "edge").await;
    for c in &mut servers {
        c.restart(&pair).await.unwrap();
    }
    // The gateway runs as a data-plane pod would: with the token of the ServiceAccount the
    // operator renders for a cluster that follows the pool, so its Role is proven enough.
    env.minimal_cluster_secret().await;
    let mut rc = minimal_cluster("chat");
    rc.spec.turn_pool_ref = Some(realtime_operator::crd::LocalRef {
        name: "edge".into(),
    });
    env.api::<RealtimeCluster>()
        .create(&PostParams::default(), &rc)
        .await
        .unwrap();
    eventually("the data plane's RoleBinding", 30, || async {
        env.api::<RoleBinding>()
            .get_opt("chat-turn-reader")
            .await
            .unwrap()
    })
    .await;
    let token = service_account_token(&env.client, &env.ns, "chat").await;
    let data_plane = client_with_token(&token).await;
    assert!(
        Api::<Secret>::namespaced(data_plane, &env.ns)
            .get("s")
            .await
            .is_err(),
        "the data plane's identity reads no other Secret"
    );
    let gateway = Gateway::start(&env.ns, "edge", &kubeconfig_file(&token, "gateway")).await;
    eventually("all three servers healthy and handed out", 30, || async {
        let mut got = gateway.ice_ports().await?;
        got.sort_unstable();
        let mut want = ports.clone();
        want.sort_unstable();
        (got == want).then_some(())
    })
    .await;
    let pool = env.api::<TurnPool>().get("edge").await.unwrap();
    assert_eq!(
        condition(&pool, "Ready"),
        Some(("True".into(), "Available".into()))
    );
    assert_eq!(condition(&pool, "Degraded").unwrap().0, "False");
    assert!(
        pool.status
            .as_ref()
            .unwrap()
            .servers
            .iter()
            .all(|s| s.rtt_millis.is_some())
    );

    // A rotation: the servers have not reloaded (they accept only the first secret), so for
    // the signing grace the operator's probes and the gateway keep signing with the
    // previous secret.
    let rotated = rotate(&env, "edge", "now", &pair).await;
    assert_eq!(rotated.previous.as_deref(), Some(pair.current.as_str()));
    let rotated_at = rotated_at(&env).await;
    // Two probe rounds after the rotation: all three still healthy.
    let pool = eventually("two probe rounds after the rotation", 20, || async {
        let p = env.api::<TurnPool>().get("edge").await.unwrap();
        let s = p.status.as_ref()?;
        s.servers
            .iter()
            .all(|s| {
                s.last_probe_time
                    .as_ref()
                    .is_some_and(|t| t.0.as_second() >= rotated_at + 2)
            })
            .then_some(p)
    })
    .await;
    assert_eq!(
        pool.status.unwrap().healthy_servers,
        3,
        "probes sign like clients: still healthy"
    );
    let (user, pass) = gateway.credential().await;
    assert_eq!(
        verify(&pair.current, &user, &pass),
        Ok(()),
        "within the grace, new credentials use the previous secret"
    );
    probe::allocate(
        servers[0].addr(),
        probe::Transport::Udp,
        &user,
        &pass,
        Duration::from_secs(2),
    )
    .await
    .expect("a server that has not reloaded yet accepts what clients get");
    // The servers reload the rotated Secret.
    for c in &mut servers {
        c.restart(&rotated).await.unwrap();
    }
    // The gateway follows the Secret: once the grace is over it signs with the new
    // secret. (The test moves the rotation time back rather than waiting 120 s; it
    // re-applies it in case a reconcile that read the Secret before wrote it back.)
    eventually(
        "the gateway to sign with the rotated secret",
        20,
        || async {
            set_rotated_at(&env, rotated_at - 3600).await;
            let (user, pass) = gateway.credential().await;
            (verify(&rotated.current, &user, &pass) == Ok(())).then_some(())
        },
    )
    .await;
    // And within the grace again (the rotation time put back), with the previous one.
    eventually(
        "the gateway to sign with the previous secret again",
        20,
        || async {
            set_rotated_at(&env, rotated_at).await;
            let (user, pass) = gateway.credential().await;
            (verify(&pair.current, &user, &pass) == Ok(())).then_some(())
        },
    )
    .await;
    let pair = rotated;

    // Kill one: it must leave the ICE list within failureThreshold × interval + 1 s.
    let bound = Duration::from_secs(failures * interval + 1);
    let killed = ports[1];
    servers[1].kill();
    let t0 = Instant::now();
    eventually("the killed server to leave the ICE list", 10, || async {
        let got = gateway.ice_ports().await?;
        (!got.contains(&killed) && got.len() == 2).then_some(())
    })
    .await;
    let took = t0.elapsed();
    eprintln!("the killed server left the ICE list after {took:?} (bound {bound:?})");
    assert!(
        took <= bound,
        "left the list after {took:?}, bound {bound:?}"
    );
    let pool = env.api::<TurnPool>().get("edge").await.unwrap();
    let status = pool.status.as_ref().unwrap();
    let dead = status
        .servers
        .iter()
        .find(|s| s.port == i32::from(killed))
        .unwrap();
    assert!(!dead.healthy);
    assert!(dead.consecutive_failures >= 2);
    assert!(
        dead.message.as_deref().unwrap().contains("binding"),
        "{:?}",
        dead.message
    );
    assert_eq!(
        condition(&pool, "Ready").unwrap().0,
        "True",
        "two healthy servers are enough"
    );
    assert_eq!(
        condition(&pool, "Degraded"),
        Some(("True".into(), "ServersUnhealthy".into()))
    );

    // Restarted: it returns.
    servers[1].restart(&pair).await.unwrap();
    eventually("the restarted server to return", 10, || async {
        gateway.ice_ports().await?.contains(&killed).then_some(())
    })
    .await;

    // All killed: the pool says so and clients get no servers.
    for c in &mut servers {
        c.kill();
    }
    let pool = eventually("Ready=False with no healthy server", 10, || async {
        let p = env.api::<TurnPool>().get("edge").await.unwrap();
        (condition(&p, "Ready") == Some(("False".into(), "NoHealthyServers".into()))).then_some(p)
    })
    .await;
    assert_eq!(pool.status.as_ref().unwrap().healthy_servers, 0);
    // The gateway sees the status through its own watch, a moment later.
    eventually("the gateway to hand out nothing (503)", 10, || async {
        (gateway.ice_ports().await == Some(Vec::new())).then_some(())
    })
    .await;
    let written = everything_written(&env, "edge").await;
    assert!(written.contains("ServerUnhealthy"));
    assert!(
        !written.contains(&pair.current),
        "secret material in status or events"
    );
    drop(gateway);
    env.stop().await;
}
