//! Real `turnserver` (coturn) processes on loopback for tests: each on its own free port
//! and relay range, configured by [`crate::coturn::config`], stopped when dropped. A
//! missing `turnserver` is an error that says how to install it, never a silent skip.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::coturn::{self, Listen, SecretPair};
use crate::probe::{self, Transport};

pub struct Coturn {
    pub port: u16,
    pub realm: String,
    dir: PathBuf,
    child: Option<Child>,
    listen: Listen,
}

/// A port free for both UDP and TCP on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no port free for both UDP and TCP"))
}

fn missing(what: &str) -> std::io::Error {
    std::io::Error::other(format!(
        "{what} not found: install coturn (scripts/stack.sh up does, with apt-get)"
    ))
}

impl Coturn {
    /// Starts coturn accepting `secrets` and waits until it answers a Binding request.
    pub async fn start(realm: &str, secrets: &SecretPair) -> std::io::Result<Coturn> {
        let mut c = Coturn::reserve(realm)?;
        c.restart(secrets).await?;
        Ok(c)
    }

    /// Picks the port without starting anything yet ([`Coturn::restart`] starts it).
    pub fn reserve(realm: &str) -> std::io::Result<Coturn> {
        let port = free_port()?;
        // A relay range of its own per process, derived from the port.
        let min = 20_000 + (port % 400) * 100;
        let listen = Listen {
            ip: Some("127.0.0.1".into()),
            port,
            relay_ip: None,
            min_relay_port: min,
            max_relay_port: min + 99,
            loopback_peers: true,
        };
        let dir = std::env::temp_dir().join(format!("coturn-test-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Coturn {
            port,
            realm: realm.to_owned(),
            dir,
            child: None,
            listen,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops the process (as a crash would: SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the process on the same port with `secrets`, as a managed pod rolled
    /// with a rotated Secret would be.
    pub async fn restart(&mut self, secrets: &SecretPair) -> std::io::Result<()> {
        self.kill();
        let conf = self.dir.join("turnserver.conf");
        std::fs::write(&conf, coturn::config(&self.realm, secrets, &self.listen))?;
        let log = std::fs::File::create(self.dir.join("turnserver.log"))?;
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    missing("turnserver")
                } else {
                    e
                }
            })?;
        self.child = Some(child);
        for _ in 0..100 {
            if probe::binding(self.addr(), Transport::Udp, Duration::from_millis(200))
                .await
                .is_ok()
                && probe::binding(self.addr(), Transport::Tcp, Duration::from_millis(200))
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(std::io::Error::other(format!(
            "turnserver on port {} did not answer within 5 s; log: {}",
            self.port,
            std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
        )))
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs coturn's own client, `turnutils_uclient`, against `port` with a credential: two
/// allocations relaying to each other (`-y`), UDP or TCP. True when it allocated and
/// relayed packets.
pub async fn uclient(
    port: u16,
    username: &str,
    password: &str,
    tcp: bool,
) -> std::io::Result<bool> {
    let mut cmd = tokio::process::Command::new("turnutils_uclient");
    cmd.args([
        "-p",
        &port.to_string(),
        "-u",
        username,
        "-w",
        password,
        "-n",
        "3",
        "-y",
        "-c",
        "-X",
    ]);
    if tcp {
        cmd.arg("-t");
    }
    cmd.arg("127.0.0.1").kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .map_err(|_| std::io::Error::other("turnutils_uclient hung for 20 s"))?
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                missing("turnutils_uclient")
            } else {
                e
            }
        })?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let received = text
        .split("tot_recv_msgs=")
        .skip(1)
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok(out.status.success() && received > 0 && !text.contains("Cannot complete Allocation"))
}
