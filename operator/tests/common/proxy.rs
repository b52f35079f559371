//! A TCP proxy in front of the API server that a test can turn into a black hole: open
//! connections stop moving bytes and new ones are accepted and never answered, as when
//! the API server's host goes away. TLS passes through untouched (the serving
//! certificate names 127.0.0.1, whatever the port).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Proxy {
    pub addr: SocketAddr,
    blackhole: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (blackhole, mode) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut mode = mode.clone();
                connections.spawn(async move {
                    let blackholed = *mode.borrow();
                    if blackholed {
                        // Accepted, never answered.
                        std::future::pending::<()>().await;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = async { drop(mode.wait_for(|b| *b).await) } => {
                            // Hold both ends open and silent.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Proxy {
            addr,
            blackhole,
            task,
        }
    }

    /// From now on nothing gets through, and nothing is refused either.
    pub fn blackhole(&self) {
        self.blackhole.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The API server's address from KUBECONFIG.
pub fn apiserver_addr() -> SocketAddr {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let server = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .server
        .clone()
        .unwrap();
    let host_port = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    use std::net::ToSocketAddrs;
    host_port.to_socket_addrs().unwrap().next().unwrap()
}

/// The test kubeconfig pointed at `addr` instead of the API server.
pub fn kubeconfig_via(addr: SocketAddr) -> kube::config::Kubeconfig {
    let mut kubeconfig =
        kube::config::Kubeconfig::read_from(std::env::var("KUBECONFIG").unwrap()).unwrap();
    for cluster in &mut kubeconfig.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(format!("https://{addr}"));
        }
    }
    kubeconfig
}
