//! The ICE server list handed to clients: RTCConfiguration-shaped
//! `{iceServers: [{urls, username, credential}], ttl}`, built from the healthy servers
//! (already ordered by round-trip time) and a credential minted for the user.

use crate::credentials::Credential;
use crate::probe::Transport;

/// A server that may be handed to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub transports: Vec<Transport>,
}

fn host_part(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The URIs of one server: `stun:` once, then `turn:`/`turns:` per transport.
pub fn urls(server: &Server) -> Vec<String> {
    let hp = format!("{}:{}", host_part(&server.host), server.port);
    let mut out = Vec::new();
    if server
        .transports
        .iter()
        .any(|t| matches!(t, Transport::Udp | Transport::Tcp))
    {
        out.push(format!("stun:{hp}"));
    }
    for t in &server.transports {
        out.push(match t {
            Transport::Udp => format!("turn:{hp}?transport=udp"),
            Transport::Tcp => format!("turn:{hp}?transport=tcp"),
            Transport::Tls => format!("turns:{hp}?transport=tcp"),
        });
    }
    out
}

/// `{iceServers: [...], ttl}` as JSON text-ready parts: one entry per server, in order.
pub fn configuration(
    servers: &[Server],
    credential: &Credential,
    ttl_seconds: u64,
) -> IceConfiguration {
    IceConfiguration {
        ice_servers: servers
            .iter()
            .map(|s| IceServer {
                urls: urls(s),
                username: credential.username.clone(),
                credential: credential.password.clone(),
            })
            .collect(),
        ttl: ttl_seconds,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceConfiguration {
    pub ice_servers: Vec<IceServer>,
    pub ttl: u64,
}

/// Parses a `TURN_URLS` entry (`turn:host:port?transport=udp`, `turns:host:port`,
/// `stun:host:port`) into host, port and transport. `stun:` maps to UDP.
pub fn parse_url(url: &str) -> Result<(String, u16, Transport), String> {
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| format!("{url:?} has no scheme (turn:, turns: or stun:)"))?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let transport_param = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("transport="));
    let transport = match (scheme, transport_param) {
        ("turns", _) => Transport::Tls,
        ("turn" | "stun", None | Some("udp")) => Transport::Udp,
        ("turn", Some("tcp")) => Transport::Tcp,
        ("turn" | "stun", Some(other)) => {
            return Err(format!("{url:?}: transport {other:?} is not udp or tcp"));
        }
        (other, _) => {
            return Err(format!(
                "{url:?}: scheme {other:?} is not turn, turns or stun"
            ));
        }
    };
    let default_port = if transport == Transport::Tls {
        5349
    } else {
        3478
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            p.parse()
                .map_err(|_| format!("{url:?}: port {p:?} is not a number"))?,
        ),
        _ => (
            hostport
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            default_port,
        ),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host, port, transport))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_per_transport() {
        let s = Server {
            host: "turn.example.com".into(),
            port: 3478,
            transports: vec![Transport::Udp, Transport::Tcp, Transport::Tls],
        };
        assert_eq!(
            urls(&s),
            [
                "stun:turn.example.com:3478",
                "turn:turn.example.com:3478?transport=udp",
                "turn:turn.example.com:3478?transport=tcp",
                "turns:turn.example.com:3478?transport=tcp",
            ]
        );
        let v6 = Server {
            host: "::1".into(),
            port: 1,
            transports: vec![Transport::Tls],
        };
        assert_eq!(urls(&v6), ["turns:[::1]:1?transport=tcp"]);
    }

    #[test]
    fn parses_turn_urls() {
        assert_eq!(
            parse_url("turn:127.0.0.1:3478?transport=tcp").unwrap(),
            ("127.0.0.1".into(), 3478, Transport::Tcp)
        );
        assert_eq!(
            parse_url("turns:turn.example.com").unwrap(),
            ("turn.example.com".into(), 5349, Transport::Tls)
        );
        assert_eq!(
            parse_url("stun:[::1]:19302").unwrap(),
            ("::1".into(), 19302, Transport::Udp)
        );
        assert!(parse_url("http://x").unwrap_err().contains("scheme"));
        assert!(parse_url("turn:x:abc").unwrap_err().contains("port"));
        assert!(
            parse_url("turn:x?transport=sctp")
                .unwrap_err()
                .contains("sctp")
        );
    }
}
