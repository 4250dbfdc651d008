//! Malformed client packets close that one connection only: over a real gateway and Redis, a
//! client in a room sends one kind of garbage per connection (Engine.IO and Socket.IO level,
//! binary attachments out of order) and is closed each time, its membership is removed, and a
//! bystander in the same room keeps being served. The parsers themselves are fuzzed (fuzz/,
//! docs/fuzzing.md); this checks what the gateway does with what they refuse.

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use redis::AsyncCommands as _;
use roomcast_shared::wire::KeySpace;
use roomcast_tests::{InProcessGateway, RedisServer, eventually, within};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{Message as Frame, Utf8Bytes},
};

type Ws = WebSocketStream<TcpStream>;

/// A raw Socket.IO client over WebSocket, connected to `/`.
struct Client(Ws);

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = client_async(url, TcpStream::connect(addr).await?).await?;
        let mut client = Self(ws);
        let open = client.next_text().await.expect("open packet");
        assert!(open.starts_with("0{"), "{open}");
        client.send("40").await?;
        let connected = client.next_text().await.expect("CONNECT reply");
        assert!(connected.starts_with("40{"), "{connected}");
        Ok(client)
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.0.send(Frame::Text(Utf8Bytes::from(text))).await?;
        Ok(())
    }

    /// The next text frame, or `None` once the server closed the connection.
    async fn next_text(&mut self) -> Option<String> {
        within("a frame from the gateway", async {
            loop {
                match self.0.next().await {
                    Some(Ok(Frame::Text(text))) if text.as_str() == "2" => {
                        let _ = self.0.send(Frame::Text(Utf8Bytes::from_static("3"))).await;
                    }
                    Some(Ok(Frame::Text(text))) => return Some(text.as_str().to_owned()),
                    Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => {}
                    Some(Ok(Frame::Close(_)) | Err(_)) | None => return None,
                    Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                }
            }
        })
        .await
    }

    /// Emits `event` with an ack id and returns the ack's arguments.
    async fn call(&mut self, id: u64, event: Value) -> anyhow::Result<Value> {
        self.send(&format!("42{id}{event}")).await?;
        let reply = self.next_text().await.expect("an ack");
        let args = reply
            .strip_prefix(&format!("43{id}"))
            .unwrap_or_else(|| panic!("not the ack {id}: {reply}"));
        Ok(serde_json::from_str(args)?)
    }
}

/// What one hostile connection sends after joining the room.
enum Garbage {
    Text(&'static str),
    Binary,
}

#[tokio::test]
async fn malformed_packets_close_that_connection_only() -> anyhow::Result<()> {
    let redis = RedisServer::spawn().await?;
    let gateway = InProcessGateway::start(InProcessGateway::config(
        &redis.url(),
        &["--gateway-id", "gw-1"],
    ))
    .await?;
    let addr = gateway.addr();
    let members = KeySpace::new("socket.io").room("/", "chat:1").members_key();
    let conn = redis.connection().await?;

    let mut bystander = Client::connect(addr).await?;
    assert_eq!(
        bystander.call(1, json!(["join", "chat:1"])).await?,
        json!([{"ok": true}])
    );

    use Garbage::{Binary, Text};
    let cases: &[(&str, &[Garbage])] = &[
        ("unknown Engine.IO type", &[Text("abc")]),
        ("Engine.IO pong with data", &[Text("3x")]),
        ("Engine.IO open from a client", &[Text("0{}")]),
        ("bad base64 binary", &[Text("b!!")]),
        ("invalid JSON", &[Text("42[")]),
        ("event that is not an array", &[Text("42{}")]),
        ("event without a name", &[Text("42[]")]),
        ("reserved event name", &[Text(r#"42["disconnect"]"#)]),
        ("CONNECT with a null payload", &[Text("40null")]),
        (
            "CONNECT_ERROR from a client",
            &[Text(r#"44{"message":"x"}"#)],
        ),
        ("unknown Socket.IO type", &[Text("49")]),
        (
            "more attachments than allowed",
            &[Text(r#"4511-["e",{"_placeholder":true,"num":0}]"#)],
        ),
        ("binary nobody announced", &[Binary]),
        (
            "text while attachments are due",
            &[
                Text(r#"451-["e",{"_placeholder":true,"num":0}]"#),
                Text(r#"42["e"]"#),
            ],
        ),
        (
            "placeholder past the attachments",
            &[Text(r#"451-["e",{"_placeholder":true,"num":3}]"#), Binary],
        ),
    ];
    for (i, (what, garbage)) in cases.iter().enumerate() {
        let mut hostile = Client::connect(addr).await?;
        assert_eq!(
            hostile.call(1, json!(["join", "chat:1"])).await?,
            json!([{"ok": true}]),
            "{what}"
        );
        for frame in *garbage {
            match frame {
                Text(text) => hostile.send(text).await?,
                Binary => {
                    hostile
                        .0
                        .send(Frame::Binary(Bytes::from_static(b"x")))
                        .await?
                }
            }
        }
        assert_eq!(hostile.next_text().await, None, "{what}: connection closed");

        // Only the bystander is left in the room, and it is still served.
        eventually(what, || {
            let mut conn = conn.clone();
            let members = members.clone();
            async move {
                let count: Option<u64> = conn.hget(members, "gw-1").await.ok()?;
                (count == Some(1)).then_some(())
            }
        })
        .await;
        let id = 2 + i as u64;
        let me = bystander.call(id, json!(["whoami"])).await?;
        assert_eq!(
            me[0]["rooms"],
            json!(["chat:1"]),
            "{what}: bystander served"
        );
    }

    gateway.stop().await?;
    Ok(())
}
