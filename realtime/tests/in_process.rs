//! A whole gateway in this test's process: `app::run` on a listener bound to port 0 (no
//! free-port race) with a shutdown future, against the real Redis, MongoDB and broker of
//! `scripts/stack.sh`. It is reached like a client would: HTTP for `/readyz` and
//! `/v1/ice-servers`, and a websocket speaking Engine.IO 4 / Socket.IO 5 frames for
//! `/chat` (a minimal client written here for the frames it needs; the official
//! socket.io-client drives the end-to-end suites in `e2e/`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// `GET path` with an optional bearer token: status and body.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next Socket.IO packet of `/chat` (Engine.IO pings are answered on the way).
async fn next_packet(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let text = text.to_string();
        if text == "2" {
            ws.send(Message::text("3")).await.unwrap();
            continue;
        }
        if let Some(packet) = text.strip_prefix('4') {
            return packet.to_owned();
        }
    }
}

/// Opens a websocket and connects to `/chat` with `token`: the connect packet's answer
/// (`0/chat,{sid}` or `4/chat,{error}`) and the socket.
async fn connect(addr: SocketAddr, token: &str) -> (String, Ws) {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(
        open.to_text().unwrap().starts_with('0'),
        "Engine.IO open: {open:?}"
    );
    let auth = json!({"token": token});
    ws.send(Message::text(format!("40/chat,{auth}")))
        .await
        .unwrap();
    let answer = next_packet(&mut ws).await;
    (answer, ws)
}

/// Emits `event` with `body` and an ack id, and returns the ack's argument.
async fn call(ws: &mut Ws, id: u32, event: &str, body: Value) -> Value {
    let packet = json!([event, body]);
    ws.send(Message::text(format!("42/chat,{id}{packet}")))
        .await
        .unwrap();
    let prefix = format!("3/chat,{id}");
    loop {
        let packet = next_packet(ws).await;
        if let Some(args) = packet.strip_prefix(&prefix) {
            let args: Value = serde_json::from_str(args).unwrap();
            return args[0].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_runs_in_process_serves_http_and_socket_io_and_stops_on_request() {
    let cfg = common::config(&[
        "--role",
        "gateway",
        "--turn-urls",
        "turn:127.0.0.1:3478",
        "--turn-secret",
        "in-process-turn-secret",
        "--shutdown-grace-seconds",
        "5",
    ]);
    let store = common::store(&cfg).await;
    let tenant = common::unique("t");
    common::conversation(&store, &tenant, "c", &["alice", "bob"], &[]).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(realtime::app::run(cfg, listener, async {
        let _ = stopped.await;
    }));

    // Ready once it has joined its consumer group.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(addr, "/readyz", None).await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready within 60 s: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // ICE servers: a credential for the token's user, refused without a token.
    let alice = common::token(&tenant, "alice");
    let (status, body) = get(addr, "/v1/ice-servers", Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    let ice: Value = serde_json::from_str(&body).unwrap();
    let server0 = &ice["iceServers"][0];
    let urls = server0["urls"].as_array().unwrap();
    assert!(
        urls.contains(&json!("turn:127.0.0.1:3478?transport=udp")),
        "{ice}"
    );
    assert!(
        server0["username"].as_str().unwrap().ends_with(":alice"),
        "{ice}"
    );
    assert!(!body.contains("in-process-turn-secret"));
    let (status, body) = get(addr, "/v1/ice-servers", None).await;
    assert_eq!(status, 401, "{body}");

    // Socket.IO: a bad token is refused at the handshake; a good one joins a room.
    let (refused, _) = connect(addr, "not-a-token").await;
    assert!(refused.starts_with("4/chat,"), "{refused}");
    assert!(refused.contains("unauthorized"), "{refused}");
    let (connected, mut ws) = connect(addr, &alice).await;
    assert!(connected.starts_with("0/chat,"), "{connected}");
    let joined = call(&mut ws, 1, "room:join", json!({"conversationId": "c"})).await;
    assert_eq!(joined["ok"], true, "{joined}");
    assert_eq!(joined["role"], "owner", "{joined}");
    assert_eq!(joined["online"], json!(["alice"]), "{joined}");
    let foreign = call(
        &mut ws,
        2,
        "room:join",
        json!({"conversationId": "elsewhere"}),
    )
    .await;
    assert_eq!(foreign["error"]["code"], "forbidden", "{foreign}");

    // Shutdown on request: the server drains and `run` returns Ok.
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("run returns within 20 s of the shutdown request")
        .unwrap();
    result.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after run returned"
    );
}
