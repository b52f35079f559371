//! The real `realtime-operator` binary as a child process (for signals and kills), and
//! the Lease it campaigns for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

use super::eventually;

/// Name of the Lease the operators in these tests campaign for.
pub const LEASE: &str = "realtime-operator";

pub struct OperatorProcess {
    child: Child,
    log: PathBuf,
}

impl OperatorProcess {
    /// Starts the operator with `kubeconfig`, watching and leasing in `ns` as `identity`.
    pub fn spawn(kubeconfig: &Path, ns: &str, identity: &str, lease_seconds: u64) -> Self {
        let log = std::env::temp_dir().join(format!("realtime-operator-test-{ns}-{identity}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_realtime-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("WATCH_NAMESPACE", ns)
            .env("POD_NAMESPACE", ns)
            .env("POD_NAME", identity)
            .env("LEASE_NAME", LEASE)
            .env("LEASE_DURATION_SECONDS", lease_seconds.to_string())
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info,kube_lease_manager=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        OperatorProcess { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text`.
    pub async fn wait_log(&self, text: &str) {
        eventually(&format!("the operator to log {text:?}"), 30, || async {
            self.log().contains(text).then_some(())
        })
        .await;
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Kills the process at once: it releases nothing.
    pub fn sigkill(&mut self) {
        self.signal("-KILL");
        self.child.wait().unwrap();
    }

    /// Waits up to `limit` for the process to exit; (status, time it took).
    pub async fn exit_within(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                panic!(
                    "the operator did not exit within {limit:?}; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The holder of the test Lease in `ns` (None when free or absent).
pub async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(LEASE)
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

/// Waits until `identity` holds the test Lease in `ns`.
pub async fn wait_holder(client: &Client, ns: &str, identity: &str) {
    eventually(&format!("{identity} to hold the lease"), 60, || async {
        (lease_holder(client, ns).await.as_deref() == Some(identity)).then_some(())
    })
    .await;
}
