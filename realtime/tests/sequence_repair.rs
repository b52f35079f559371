//! Sequence numbers after Redis loses writes: a real `redis-server` of this test's own,
//! snapshotted, then killed and restarted from the older snapshot (as after a crash with
//! RDB persistence, a restore, or a failover to a lagging replica). The counter comes
//! back *behind*; the next number must still be new. Needs `redis-server` on PATH and
//! MONGODB_URI (scripts/stack.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use realtime::delivery::{Allocation, Ledger, Timing};
use realtime::protocol::{ChatRecord, Content};
use realtime::sequence::Sequencer;
use realtime::store::Store;
use redis::aio::ConnectionManager;

struct Redis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let mut child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/stack.sh installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self {
                    child,
                    port,
                    dir: dir.to_owned(),
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not listen on {port}");
    }

    async fn connection(&self) -> ConnectionManager {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        ConnectionManager::new(client).await.unwrap()
    }

    /// Dies without saving, like a crash.
    fn kill(mut self) -> std::path::PathBuf {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.dir.clone()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn template(tenant: &str, key: &str) -> ChatRecord {
    ChatRecord {
        tenant_id: tenant.into(),
        conversation_id: "c".into(),
        message_id: uuid::Uuid::now_v7().to_string(),
        seq: 0,
        sender_id: "u".into(),
        client_message_id: key.into(),
        content: Content::Text { text: "hi".into() },
        created_at_ms: 1,
    }
}

async fn next(ledger: &Ledger, seq: &Sequencer, t: ChatRecord) -> ChatRecord {
    loop {
        match ledger.allocate(&t).await.unwrap() {
            Allocation::New(r) => return r,
            Allocation::Verify { run_id } => {
                seq.repair(&t.tenant_id, &t.conversation_id, &run_id)
                    .await
                    .unwrap();
            }
            Allocation::Existing(s) => panic!("unexpected resend {s:?}"),
        }
    }
}

fn timing() -> Timing {
    Timing {
        lease: Duration::from_secs(5),
        confirmation_timeout: Duration::from_secs(1),
        attempts: 3,
        max_interval: Duration::from_secs(5),
        ttl: Duration::from_secs(600),
    }
}

#[tokio::test]
async fn a_counter_restored_from_an_older_snapshot_never_hands_out_a_number_again() {
    let mongo = std::env::var("MONGODB_URI").unwrap_or_else(|_| {
        panic!("MONGODB_URI is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"`")
    });
    let store = Store::connect(
        &mongo,
        &format!("it_{}", uuid::Uuid::new_v4().simple()),
        "majority",
        std::time::Duration::from_secs(2),
    )
    .await
    .unwrap();
    store.ensure_indexes().await.unwrap();
    let dir = std::env::temp_dir().join(format!("seq-repair-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let tenant = "acme";

    let redis = Redis::start(port, &dir);
    let (conn, gap) = (redis.connection().await, 1000);
    let ledger = Ledger::new(conn.clone(), timing());
    let seq = Sequencer::new(conn.clone(), store.clone(), gap);
    for i in 1..=3 {
        assert_eq!(
            next(&ledger, &seq, template(tenant, &format!("a{i}")))
                .await
                .seq,
            i
        );
    }
    let _: () = redis::cmd("SAVE")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    // Two more after the snapshot; the persister stored the first of them only.
    let fourth = next(&ledger, &seq, template(tenant, "a4")).await;
    let fifth = next(&ledger, &seq, template(tenant, "a5")).await;
    assert_eq!((fourth.seq, fifth.seq), (4, 5));
    store
        .write_messages(std::slice::from_ref(&fourth), true)
        .await
        .unwrap();

    // Crash; the restart loads the snapshot: the counter says 3.
    let dir = redis.kill();
    let redis = Redis::start(port, &dir);
    let conn = redis.connection().await;
    let restored: u64 = redis::cmd("GET")
        .arg(format!("rt:{tenant}:seq:c"))
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(
        restored, 3,
        "the snapshot is older than the last numbers handed out"
    );
    let ledger = Ledger::new(conn.clone(), timing());
    let seq = Sequencer::new(conn, store.clone(), gap);
    let after = next(&ledger, &seq, template(tenant, "b1")).await;
    assert_eq!(
        after.seq,
        4 + gap + 1,
        "past the highest stored number (4) and the gap that covers the unstored one (5)"
    );
    assert_eq!(
        next(&ledger, &seq, template(tenant, "b2")).await.seq,
        after.seq + 1
    );
    drop(redis);
    store.database().drop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
