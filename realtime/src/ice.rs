//! ICE servers for calls: the healthy TURN servers with a fresh TURN REST credential for
//! the asking user, shaped like an RTCConfiguration (`{iceServers, ttl}`).
//!
//! Two sources: a static list (`TURN_URLS` + `TURN_SECRET`/`TURN_SECRET_FILE`), or a
//! TurnPool followed through the Kubernetes API (`TURN_POOL`): the data plane watches the
//! pool's status (the operator's health probes decide which servers are healthy, ordered
//! by round-trip time) and its Secret (the current shared secret). A server the operator
//! marks unhealthy leaves the list as soon as the status changes; no restart is needed.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::watcher;
use realtime_api::{CURRENT_KEY, PREVIOUS_KEY, ROTATED_AT_ANNOTATION, TurnPool, TurnPoolStatus};
use realtime_turn::coturn::SecretPair;
use realtime_turn::credentials;
use realtime_turn::ice::{self, Server};
use realtime_turn::probe::Transport;
use serde_json::{Value, json};

use crate::config::TurnConfig;
use crate::error::{ClientError, ErrorCode};

/// What the data plane currently knows about its TURN servers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    servers: Vec<Server>,
    secret: Option<SecretPair>,
    /// When the pool's secret was last rotated (seconds since the epoch).
    rotated_at: u64,
    ttl: Duration,
    /// Why there is nothing to hand out, for the error message.
    problem: Option<String>,
}

#[derive(Clone)]
pub enum IceProvider {
    /// No TURN configured: `call:ice-servers` answers `unavailable`.
    Disabled,
    Static {
        servers: Vec<Server>,
        secret: Option<String>,
        secret_file: Option<std::path::PathBuf>,
        ttl: Duration,
    },
    Pool(Arc<RwLock<View>>),
}

/// Groups `TURN_URLS` entries by host and port.
pub fn static_servers(urls: &[String]) -> Result<Vec<Server>, String> {
    let mut servers: Vec<Server> = Vec::new();
    for url in urls {
        let (host, port, transport) = ice::parse_url(url)?;
        match servers
            .iter_mut()
            .find(|s| s.host == host && s.port == port)
        {
            Some(s) if !s.transports.contains(&transport) => s.transports.push(transport),
            Some(_) => {}
            None => servers.push(Server {
                host,
                port,
                transports: vec![transport],
            }),
        }
    }
    Ok(servers)
}

/// The healthy servers of a TurnPool status, fastest first.
fn healthy_servers(status: Option<&TurnPoolStatus>) -> Vec<Server> {
    let mut found: Vec<(i64, Server)> = status
        .map(|s| s.servers.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|s| s.healthy)
        .filter_map(|s| {
            let transports: Vec<Transport> = s.transports.iter().map(|t| transport(*t)).collect();
            Some((
                s.rtt_millis.unwrap_or(i64::MAX),
                Server {
                    host: s.host.clone(),
                    port: u16::try_from(s.port).ok()?,
                    transports: if transports.is_empty() {
                        vec![Transport::Udp]
                    } else {
                        transports
                    },
                },
            ))
        })
        .collect();
    found.sort_by_key(|(rtt, _)| *rtt);
    found.into_iter().map(|(_, s)| s).collect()
}

/// The ICE list's name for a transport of the resource.
fn transport(t: realtime_api::Transport) -> Transport {
    match t {
        realtime_api::Transport::Udp => Transport::Udp,
        realtime_api::Transport::Tcp => Transport::Tcp,
        realtime_api::Transport::Tls => Transport::Tls,
    }
}

impl IceProvider {
    /// Builds the provider; with a pool, starts watching it (and its Secret).
    pub async fn start(
        cfg: &TurnConfig,
        cancel: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        if let Some(pool) = &cfg.pool {
            let client = kube::Client::try_default().await.map_err(|e| {
                anyhow::anyhow!("TURN_POOL needs access to the Kubernetes API: {e}")
            })?;
            let ns = cfg
                .pool_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let view = Arc::new(RwLock::new(View {
                problem: Some(format!("TurnPool {ns}/{pool} not seen yet")),
                ..View::default()
            }));
            tokio::spawn(watch_pool(
                client.clone(),
                ns.clone(),
                pool.clone(),
                view.clone(),
                cancel.clone(),
            ));
            tokio::spawn(watch_secret(
                client,
                ns,
                realtime_api::secret_name(pool),
                view.clone(),
                cancel,
            ));
            return Ok(IceProvider::Pool(view));
        }
        if cfg.urls.is_empty() {
            return Ok(IceProvider::Disabled);
        }
        Ok(IceProvider::Static {
            servers: static_servers(&cfg.urls).map_err(anyhow::Error::msg)?,
            secret: cfg.secret.clone(),
            secret_file: cfg.secret_file.clone(),
            // In range: `Config::validate` refuses anything else at start-up.
            ttl: Duration::from_secs(cfg.credential_ttl),
        })
    }

    /// `{iceServers: [{urls, username, credential}], ttl}` for `user`, healthy servers only.
    pub fn configuration(&self, user: &str) -> Result<Value, ClientError> {
        let unavailable = |why: String| ClientError::new(ErrorCode::Unavailable, why);
        let (servers, secret, ttl) = match self {
            IceProvider::Disabled => {
                return Err(unavailable(
                    "no TURN servers are configured for this installation".into(),
                ));
            }
            IceProvider::Static {
                servers,
                secret,
                secret_file,
                ttl,
            } => {
                let secret = match (secret, secret_file) {
                    (Some(s), _) => s.clone(),
                    (None, Some(path)) => std::fs::read_to_string(path)
                        .map(|s| s.trim().to_owned())
                        .map_err(|e| {
                            tracing::warn!(error = %e, "TURN_SECRET_FILE unreadable");
                            unavailable("the TURN secret is not readable right now".into())
                        })?,
                    (None, None) => return Err(unavailable("no TURN secret configured".into())),
                };
                (servers.clone(), secret, *ttl)
            }
            IceProvider::Pool(view) => {
                let v = view
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let Some(pair) = &v.secret else {
                    return Err(unavailable(
                        v.problem
                            .unwrap_or_else(|| "the TURN secret is not available yet".into()),
                    ));
                };
                // Right after a rotation, the previous secret (servers may still be
                // picking up the new one).
                let secret = pair
                    .signing(v.rotated_at, credentials::now_unix())
                    .to_owned();
                if v.servers.is_empty() {
                    return Err(unavailable(
                        v.problem
                            .unwrap_or_else(|| "no TURN server is healthy right now".into()),
                    ));
                }
                (v.servers, secret, v.ttl)
            }
        };
        let credential = credentials::mint(secret.as_bytes(), user, ttl, credentials::now_unix());
        let config = ice::configuration(&servers, &credential, ttl.as_secs());
        Ok(json!({
            "iceServers": config.ice_servers.iter().map(|s| json!({
                "urls": s.urls,
                "username": s.username,
                "credential": s.credential,
            })).collect::<Vec<_>>(),
            "ttl": config.ttl,
        }))
    }
}

/// Watches one named object and hands every change to `update` (`None` when deleted),
/// until cancelled. Watch errors are retried by the watcher with back-off.
async fn follow<K>(
    api: Api<K>,
    name: &str,
    view: Arc<RwLock<View>>,
    cancel: tokio_util::sync::CancellationToken,
    mut update: impl FnMut(&mut View, Option<K>) + Send,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, config));
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            e = events.next() => e,
        };
        let Some(event) = event else { return };
        let change = match event {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => Some(obj),
            Ok(watcher::Event::Delete(_)) => None,
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(e) => {
                tracing::warn!(error = %e, object = name, "watch failed; retrying");
                continue;
            }
        };
        update(
            &mut view
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            change,
        );
    }
}

async fn watch_pool(
    client: kube::Client,
    ns: String,
    name: String,
    view: Arc<RwLock<View>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let api: Api<TurnPool> = Api::namespaced(client, &ns);
    follow(api, &name.clone(), view, cancel, |v, pool| {
        let Some(pool) = pool else {
            v.servers.clear();
            v.problem = Some(format!("TurnPool {ns}/{name} was deleted"));
            return;
        };
        v.servers = healthy_servers(pool.status.as_ref());
        v.ttl =
            Duration::from_secs(u64::try_from(pool.spec.credential_ttl_seconds).unwrap_or(86_400));
        v.problem = v
            .servers
            .is_empty()
            .then(|| format!("no server of TurnPool {ns}/{name} is healthy right now"));
        tracing::debug!(healthy = v.servers.len(), "TurnPool status changed");
    })
    .await;
}

async fn watch_secret(
    client: kube::Client,
    ns: String,
    name: String,
    view: Arc<RwLock<View>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let api: Api<Secret> = Api::namespaced(client, &ns);
    follow(api, &name, view, cancel, |v, secret| {
        let text = |s: &Secret, key: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|t| !t.is_empty())
        };
        v.secret = secret.as_ref().and_then(|s| {
            Some(SecretPair {
                current: text(s, CURRENT_KEY)?,
                previous: text(s, PREVIOUS_KEY),
            })
        });
        v.rotated_at = secret
            .as_ref()
            .and_then(|s| s.metadata.annotations.as_ref())
            .and_then(|a| a.get(ROTATED_AT_ANNOTATION))
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map_or(0, |t| u64::try_from(t.as_second()).unwrap_or(0));
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_urls_group_by_server() {
        let s = static_servers(&[
            "turn:127.0.0.1:3478?transport=udp".into(),
            "turn:127.0.0.1:3478?transport=tcp".into(),
            "stun:127.0.0.1:3478".into(),
            "turns:turn.example.com:5349".into(),
        ])
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].transports, [Transport::Udp, Transport::Tcp]);
        assert_eq!(s[1].transports, [Transport::Tls]);
    }

    #[test]
    fn only_healthy_servers_fastest_first() {
        let status: TurnPoolStatus = serde_json::from_value(json!({"servers": [
            {"host": "a", "port": 1, "healthy": true, "rttMillis": 30, "transports": ["udp"]},
            {"host": "b", "port": 2, "healthy": false, "rttMillis": 1, "transports": ["udp"]},
            {"host": "c", "port": 3, "healthy": true, "rttMillis": 5, "transports": ["udp", "tcp"]},
        ]}))
        .unwrap();
        let servers = healthy_servers(Some(&status));
        let hosts: Vec<&str> = servers.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(hosts, ["c", "a"]);
        assert_eq!(servers[0].transports, [Transport::Udp, Transport::Tcp]);
        assert!(healthy_servers(None).is_empty());
    }

    #[test]
    fn configuration_is_rtc_shaped_with_a_valid_credential() {
        let p = IceProvider::Static {
            servers: static_servers(&["turn:127.0.0.1:3478?transport=udp".into()]).unwrap(),
            secret: Some("s3cret".into()),
            secret_file: None,
            ttl: Duration::from_secs(600),
        };
        let c = p.configuration("alice").unwrap();
        assert_eq!(c["ttl"], 600);
        let server = &c["iceServers"][0];
        assert_eq!(server["urls"][1], "turn:127.0.0.1:3478?transport=udp");
        let username = server["username"].as_str().unwrap();
        assert!(username.ends_with(":alice"));
        let now = credentials::now_unix();
        assert_eq!(
            credentials::verify(
                &[b"s3cret"],
                username,
                server["credential"].as_str().unwrap(),
                now
            ),
            Ok(())
        );
        assert_eq!(
            IceProvider::Disabled.configuration("a").unwrap_err().code,
            ErrorCode::Unavailable
        );
    }
}
