//! The Engine.IO v4 layer (`roomcast_gateway::eio`) over real HTTP and WebSocket connections,
//! on the points the official engine.io-protocol suite checks and that a server can easily get
//! wrong: no ping before `pingInterval`, one long-poll at a time, an abandoned long-poll ends the
//! session, the polling → WebSocket upgrade, heartbeat timeouts. (The suite itself is run
//! locally with tests/conformance/run.sh; CI cannot fetch it.)

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use roomcast_gateway::eio::{
    DisconnectReason, Engine, EngineConfig, EngineHandler, EngineSocket, Message, Str,
};
use roomcast_tests::{eventually, http_request, within};
use serde_json::Value;
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{Message as Frame, Utf8Bytes},
};

/// Sends every message back as it came.
struct Echo;

impl EngineHandler for Echo {
    type Data = ();
    fn on_connect(&self, _: &Arc<EngineSocket<()>>) {}
    fn on_message(&self, socket: &Arc<EngineSocket<()>>, message: Str) {
        let _ = socket.emit(Message::from(message.as_str()));
    }
    fn on_binary(&self, socket: &Arc<EngineSocket<()>>, data: Bytes) {
        let _ = socket.emit_binary(data);
    }
    fn on_disconnect(&self, _: &Arc<EngineSocket<()>>, _: DisconnectReason) {}
}

/// An echo server at `/engine.io/` on an ephemeral port.
async fn serve(ping_interval: Duration, ping_timeout: Duration) -> anyhow::Result<SocketAddr> {
    roomcast_tests::init_logging();
    let config = EngineConfig {
        ping_interval,
        ping_timeout,
        ..EngineConfig::new("/engine.io")
    };
    let router = Engine::new(Arc::new(Echo), config).router::<()>();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// Pings far in the future: nothing heartbeat-related happens during a test.
async fn quiet_server() -> anyhow::Result<SocketAddr> {
    serve(Duration::from_secs(60), Duration::from_secs(60)).await
}

const POLLING: &str = "/engine.io/?EIO=4&transport=polling";

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    within("GET", http_request(addr, "GET", path, b""))
        .await
        .expect("GET")
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    within("POST", http_request(addr, "POST", path, body.as_bytes()))
        .await
        .expect("POST")
}

/// Opens a polling session; returns its sid and open packet.
async fn handshake(addr: SocketAddr) -> (String, Value) {
    let (status, body) = get(addr, POLLING).await;
    assert_eq!(status, 200, "handshake: {body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet"))
        .expect("open packet JSON");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    (sid, open)
}

fn session(sid: &str) -> String {
    format!("{POLLING}&sid={sid}")
}

type Ws = WebSocketStream<TcpStream>;

async fn websocket(addr: SocketAddr, sid: Option<&str>) -> anyhow::Result<Ws> {
    let mut url = format!("ws://{addr}/engine.io/?EIO=4&transport=websocket");
    if let Some(sid) = sid {
        url.push_str("&sid=");
        url.push_str(sid);
    }
    let stream = TcpStream::connect(addr).await?;
    let (ws, _) = client_async(url, stream).await?;
    Ok(ws)
}

/// The next data frame, or `None` once the server closed the WebSocket.
async fn next_frame(ws: &mut Ws) -> Option<Frame> {
    within("a WebSocket frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => {}
                Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(frame)) => return Some(frame),
            }
        }
    })
    .await
}

fn text(s: &'static str) -> Frame {
    Frame::Text(Utf8Bytes::from_static(s))
}

#[tokio::test]
async fn polling_echoes_packets_in_order_and_pings_only_after_the_interval() -> anyhow::Result<()> {
    let addr = quiet_server().await?;
    let (sid, open) = handshake(addr).await;
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(open["pingInterval"], 60_000);
    assert_eq!(open["maxPayload"], 1_000_000);

    let payload = "4one\u{1e}4two \u{e9}\u{1e}bAQIDBA==";
    assert_eq!(
        post(addr, &session(&sid), payload).await,
        (200, "ok".into())
    );
    // A server that pinged at once (engineioxide does) would answer "2\x1e4one…" here.
    assert_eq!(get(addr, &session(&sid)).await, (200, payload.into()));
    Ok(())
}

#[tokio::test]
async fn heartbeat_pings_and_a_missing_pong_ends_the_session() -> anyhow::Result<()> {
    let addr = serve(Duration::from_millis(50), Duration::from_secs(2)).await?;
    let (sid, _) = handshake(addr).await;
    assert_eq!(get(addr, &session(&sid)).await, (200, "2".into()));
    assert_eq!(post(addr, &session(&sid), "3").await, (200, "ok".into()));
    assert_eq!(
        get(addr, &session(&sid)).await,
        (200, "2".into()),
        "answered pings keep the session"
    );
    // No pong this time: the waiting poll ends with a close packet, then the sid is unknown.
    assert_eq!(get(addr, &session(&sid)).await, (200, "1".into()));
    assert_eq!(get(addr, &session(&sid)).await.0, 400);
    Ok(())
}

#[tokio::test]
async fn two_polls_at_once_end_the_session() -> anyhow::Result<()> {
    let addr = quiet_server().await?;
    let (sid, _) = handshake(addr).await;
    let path = session(&sid);
    let (a, b) = tokio::join!(get(addr, &path), get(addr, &path));
    // Whichever came second is refused; the one waiting gets the close packet.
    let mut outcomes = [a, b];
    outcomes.sort();
    assert_eq!(outcomes, [(200, "1".into()), (400, outcomes[1].1.clone())]);
    assert_eq!(get(addr, &path).await.0, 400, "the session is gone");
    Ok(())
}

#[tokio::test]
async fn an_abandoned_poll_ends_the_session() -> anyhow::Result<()> {
    let addr = quiet_server().await?;
    let (sid, _) = handshake(addr).await;
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\n\r\n", session(&sid));
    stream.write_all(request.as_bytes()).await?;
    drop(stream);
    eventually("the session to end with its abandoned poll", || async {
        // A POST to a live session is answered "ok" at once; to a dead one, 400.
        let (status, _) = http_request(addr, "POST", &session(&sid), b"6")
            .await
            .ok()?;
        (status == 400).then_some(())
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn malformed_payload_ends_the_session() -> anyhow::Result<()> {
    let addr = quiet_server().await?;
    let (sid, _) = handshake(addr).await;
    assert_eq!(post(addr, &session(&sid), "abc").await.0, 400);
    assert_eq!(get(addr, &session(&sid)).await.0, 400);
    Ok(())
}

#[tokio::test]
async fn bad_handshakes_are_refused() -> anyhow::Result<()> {
    let addr = quiet_server().await?;
    for path in [
        "/engine.io/?transport=polling",
        "/engine.io/?EIO=3&transport=polling",
        "/engine.io/?EIO=4",
        "/engine.io/?EIO=4&transport=carrier-pigeon",
        "/engine.io/?EIO=4&transport=polling&sid=unknown",
    ] {
        let (status, body) = get(addr, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.starts_with("{\"code\":"), "{path}: {body}");
    }
    assert_eq!(post(addr, POLLING, "").await.0, 400, "a handshake is a GET");
    Ok(())
}

#[tokio::test]
async fn websocket_session_echoes_text_and_binary_and_closes_on_request() -> anyhow::Result<()> {
    let addr = quiet_server().await?;
    let mut ws = websocket(addr, None).await?;
    let Some(Frame::Text(open)) = next_frame(&mut ws).await else {
        panic!("no open packet");
    };
    let open: Value = serde_json::from_str(open.as_str().strip_prefix('0').expect("open"))?;
    assert_eq!(open["upgrades"], serde_json::json!([]));

    ws.send(text("4hello")).await?;
    assert_eq!(next_frame(&mut ws).await, Some(text("4hello")));
    ws.send(Frame::Binary(Bytes::from_static(&[1, 2, 3])))
        .await?;
    assert_eq!(
        next_frame(&mut ws).await,
        Some(Frame::Binary(Bytes::from_static(&[1, 2, 3])))
    );
    ws.send(text("1")).await?;
    assert_eq!(next_frame(&mut ws).await, None, "closed by the server");
    Ok(())
}

#[tokio::test]
async fn polling_session_upgrades_to_websocket() -> anyhow::Result<()> {
    let addr = quiet_server().await?;
    let (sid, _) = handshake(addr).await;
    let path = session(&sid);
    let waiting_poll = tokio::spawn(async move { get(addr, &path).await });

    let mut ws = websocket(addr, Some(&sid)).await?;
    ws.send(text("2probe")).await?;
    assert_eq!(next_frame(&mut ws).await, Some(text("3probe")));
    assert_eq!(
        waiting_poll.await?,
        (200, "6".into()),
        "the waiting poll ends with a noop so the client can pause polling"
    );
    // Queued while upgrading: must arrive over the WebSocket once upgraded.
    assert_eq!(post(addr, &session(&sid), "4queued").await.0, 200);
    ws.send(text("5")).await?;
    assert_eq!(next_frame(&mut ws).await, Some(text("4queued")));
    ws.send(text("4hello")).await?;
    assert_eq!(next_frame(&mut ws).await, Some(text("4hello")));

    assert_eq!(
        get(addr, &session(&sid)).await.0,
        400,
        "polling requests after the upgrade are refused"
    );
    let mut second = websocket(addr, Some(&sid)).await?;
    assert_eq!(
        next_frame(&mut second).await,
        None,
        "a second WebSocket for an upgraded session is closed"
    );
    ws.send(text("4still here")).await?;
    assert_eq!(next_frame(&mut ws).await, Some(text("4still here")));
    Ok(())
}
