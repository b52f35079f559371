//! Probing a TURN server: a STUN Binding request per transport and a TURN Allocate with a
//! credential (which proves the server accepts the secret that signed it). UDP requests
//! are retransmitted until the deadline; TCP uses STUN's own framing. A successful
//! allocation is released at once (Refresh with lifetime 0).
//!
//! TLS (`turns:`) servers are checked for TCP reachability only: the probe does not
//! speak TLS, and says so in its report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::stun::{self, Class, Message};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Transport::Udp, Transport::Tcp, Transport::Tls]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Io(String),
    #[error("refused: {code} {reason}")]
    Refused { code: u16, reason: String },
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl From<std::io::Error> for ProbeError {
    fn from(e: std::io::Error) -> Self {
        ProbeError::Io(e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub rtt: Duration,
    pub mapped: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub rtt: Duration,
    pub relayed: SocketAddr,
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

fn transaction() -> [u8; 12] {
    rand::random()
}

async fn within<T>(
    deadline: Instant,
    timeout: Duration,
    f: impl Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, f)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

impl Conn {
    async fn open(addr: SocketAddr, transport: Transport) -> Result<Conn, ProbeError> {
        match transport {
            Transport::Udp => {
                let local: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0"
                        .parse()
                        .map_err(|_| ProbeError::Io("bind".into()))?
                } else {
                    "[::]:0"
                        .parse()
                        .map_err(|_| ProbeError::Io("bind".into()))?
                };
                let sock = UdpSocket::bind(local).await?;
                sock.connect(addr).await?;
                Ok(Conn::Udp(sock))
            }
            Transport::Tcp | Transport::Tls => Ok(Conn::Tcp(TcpStream::connect(addr).await?)),
        }
    }

    /// Sends a request and returns the response with the same transaction id.
    async fn exchange(&mut self, request: &[u8], tx: [u8; 12]) -> Result<Message, ProbeError> {
        Ok(self.exchange_raw(request, tx).await?.0)
    }

    /// [`Conn::exchange`], also returning the response's bytes (to check its integrity).
    async fn exchange_raw(
        &mut self,
        request: &[u8],
        tx: [u8; 12],
    ) -> Result<(Message, Vec<u8>), ProbeError> {
        match self {
            Conn::Udp(sock) => {
                let mut buf = vec![0u8; 2048];
                let mut wait = Duration::from_millis(100);
                loop {
                    sock.send(request).await?;
                    match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
                        Ok(Ok(n)) => {
                            let m = Message::decode(&buf[..n])
                                .map_err(|e| ProbeError::Protocol(e.to_string()))?;
                            if m.transaction == tx {
                                return Ok((m, buf[..n].to_vec()));
                            }
                        }
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => wait = (wait * 2).min(Duration::from_millis(800)),
                    }
                }
            }
            Conn::Tcp(stream) => {
                stream.write_all(request).await?;
                loop {
                    let mut header = [0u8; stun::HEADER_LEN];
                    stream.read_exact(&mut header).await?;
                    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
                    let mut whole = header.to_vec();
                    whole.resize(stun::HEADER_LEN + len, 0);
                    stream.read_exact(&mut whole[stun::HEADER_LEN..]).await?;
                    let m =
                        Message::decode(&whole).map_err(|e| ProbeError::Protocol(e.to_string()))?;
                    if m.transaction == tx {
                        return Ok((m, whole));
                    }
                }
            }
        }
    }
}

/// A STUN Binding request; for TLS, a TCP connection only.
pub async fn binding(
    addr: SocketAddr,
    transport: Transport,
    timeout: Duration,
) -> Result<Binding, ProbeError> {
    let started = Instant::now();
    let deadline = started + timeout;
    within(deadline, timeout, async {
        let mut conn = Conn::open(addr, transport).await?;
        if transport == Transport::Tls {
            return Ok(Binding {
                rtt: started.elapsed(),
                mapped: None,
            });
        }
        let tx = transaction();
        let request = Message::request(stun::BINDING_REQUEST, tx).encode();
        let response = conn.exchange(&request, tx).await?;
        expect_success(&response)?;
        Ok(Binding {
            rtt: started.elapsed(),
            mapped: response
                .xor_address(stun::ATTR_XOR_MAPPED_ADDRESS)
                .or_else(|| response.xor_address(stun::ATTR_MAPPED_ADDRESS)),
        })
    })
    .await
}

fn expect_success(m: &Message) -> Result<(), ProbeError> {
    match m.class {
        Class::Success => Ok(()),
        Class::Error => {
            let (code, reason) = m.error_code().unwrap_or((0, "error without code".into()));
            Err(ProbeError::Refused { code, reason })
        }
        other => Err(ProbeError::Protocol(format!(
            "{other:?} instead of a response"
        ))),
    }
}

/// A TURN Allocate (UDP relay) with the long-term credential `username`/`password`,
/// released right after. Fails with `Refused { code: 401, .. }` when the server does not
/// accept the credential.
pub async fn allocate(
    addr: SocketAddr,
    transport: Transport,
    username: &str,
    password: &str,
    timeout: Duration,
) -> Result<Allocation, ProbeError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let transport = if transport == Transport::Tls {
        Transport::Tcp
    } else {
        transport
    };
    within(deadline, timeout, async {
        let mut conn = Conn::open(addr, transport).await?;
        let base = |tx| {
            Message::request(stun::ALLOCATE_REQUEST, tx).with(
                stun::ATTR_REQUESTED_TRANSPORT,
                stun::requested_transport(stun::TRANSPORT_UDP),
            )
        };
        let tx = transaction();
        let mut challenge = conn.exchange(&base(tx).encode(), tx).await?;
        let mut stale_retry = true;
        loop {
            if challenge.class == Class::Success {
                // A server without authentication: nothing to prove.
                let relayed = relayed(&challenge)?;
                return Ok(Allocation {
                    rtt: started.elapsed(),
                    relayed,
                });
            }
            match challenge.error_code() {
                Some((401, _)) | Some((438, _)) => {}
                Some((code, reason)) => return Err(ProbeError::Refused { code, reason }),
                None => {
                    return Err(ProbeError::Protocol(
                        "allocate answer without error code".into(),
                    ));
                }
            }
            let realm = text(&challenge, stun::ATTR_REALM)?;
            let nonce = text(&challenge, stun::ATTR_NONCE)?;
            let key = stun::long_term_key(username, &realm, password);
            let tx = transaction();
            let request = base(tx)
                .with(stun::ATTR_USERNAME, username)
                .with(stun::ATTR_REALM, realm.as_str())
                .with(stun::ATTR_NONCE, nonce.as_str())
                .encode_with_integrity(&key);
            let (answer, raw) = conn.exchange_raw(&request, tx).await?;
            match (answer.class, answer.error_code()) {
                (Class::Success, _) => {
                    // The answer proves the server holds the same secret (RFC 5389 §10.2.3).
                    if stun::verify_integrity(&raw, &key) != Some(true) {
                        return Err(ProbeError::Protocol(
                            "the allocate answer's MESSAGE-INTEGRITY does not verify with the pool's secret".into(),
                        ));
                    }
                    let relayed = relayed(&answer)?;
                    let rtt = started.elapsed();
                    release(&mut conn, username, &realm, &nonce, &key).await;
                    return Ok(Allocation { rtt, relayed });
                }
                (_, Some((438, _))) if stale_retry => {
                    stale_retry = false;
                    challenge = answer;
                }
                _ => {
                    expect_success(&answer)?;
                    return Err(ProbeError::Protocol("allocate failed".into()));
                }
            }
        }
    })
    .await
}

fn relayed(m: &Message) -> Result<SocketAddr, ProbeError> {
    m.xor_address(stun::ATTR_XOR_RELAYED_ADDRESS)
        .ok_or_else(|| ProbeError::Protocol("allocate success without XOR-RELAYED-ADDRESS".into()))
}

fn text(m: &Message, kind: u16) -> Result<String, ProbeError> {
    m.attribute(kind)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .ok_or_else(|| ProbeError::Protocol(format!("401 without attribute {kind:#06x}")))
}

/// Frees the allocation (Refresh, LIFETIME 0); best effort, never fails the probe.
async fn release(conn: &mut Conn, username: &str, realm: &str, nonce: &str, key: &[u8]) {
    let tx = transaction();
    let request = Message::request(stun::REFRESH_REQUEST, tx)
        .with(stun::ATTR_LIFETIME, 0u32.to_be_bytes().to_vec())
        .with(stun::ATTR_USERNAME, username)
        .with(stun::ATTR_REALM, realm)
        .with(stun::ATTR_NONCE, nonce)
        .encode_with_integrity(key);
    let _ = tokio::time::timeout(Duration::from_millis(300), conn.exchange(&request, tx)).await;
}

/// Resolves `host:port` (first address).
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ProbeError> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| ProbeError::Io(format!("{host} resolves to no address")))
}

/// The result of a full check of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ok: bool,
    /// Slowest Binding round trip among the transports (when any answered).
    pub rtt: Option<Duration>,
    /// Human-readable summary, free of secret material.
    pub message: String,
}

/// Probes a server: a Binding on every transport, then an Allocate with the credential
/// over the first of UDP/TCP it offers. Every step must succeed.
pub async fn check(
    host: &str,
    port: u16,
    transports: &[Transport],
    username: &str,
    password: &str,
    timeout: Duration,
) -> Report {
    let fail = |message: String| Report {
        ok: false,
        rtt: None,
        message,
    };
    let addr = match resolve(host, port).await {
        Ok(a) => a,
        Err(e) => return fail(format!("resolve: {e}")),
    };
    let mut rtt = Duration::ZERO;
    let mut notes = Vec::new();
    for &t in transports {
        match binding(addr, t, timeout).await {
            Ok(b) => {
                rtt = rtt.max(b.rtt);
                if t == Transport::Tls {
                    notes.push("tls: TCP reachability only".to_owned());
                }
            }
            Err(e) => return fail(format!("{} binding: {e}", t.as_str())),
        }
    }
    let Some(&relay_via) = transports
        .iter()
        .find(|t| matches!(t, Transport::Udp | Transport::Tcp))
    else {
        return Report {
            ok: true,
            rtt: Some(rtt),
            message: notes.join("; "),
        };
    };
    match allocate(addr, relay_via, username, password, timeout).await {
        Ok(_) => {
            notes.insert(0, "binding and allocate succeeded".to_owned());
            Report {
                ok: true,
                rtt: Some(rtt),
                message: notes.join("; "),
            }
        }
        Err(e) => fail(format!("{} allocate: {e}", relay_via.as_str())),
    }
}
