//! The client side of Engine.IO v4 / Socket.IO v5 over WebSocket, as much as the load generator
//! needs: the handshake (`0{…}` open packet), the namespace CONNECT (`40`, or
//! `40{"pid":…,"offset":…}` to recover a session), `join` with an acknowledgement, pong replies,
//! and a cheap scan of the benchmark's event packets (no JSON parsing on the hot path).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{Message as Frame, protocol::WebSocketConfig},
};

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Largest frame the load generator accepts (a recovery replay is many frames, not one).
const MAX_FRAME: usize = 1 << 20;
/// How long one step of a handshake may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket ids a CONNECT reply gives.
#[derive(Debug, Clone, Default)]
pub(crate) struct SocketIds {
    pub(crate) sid: String,
    /// Private session id (connection state recovery on).
    pub(crate) pid: Option<String>,
}

/// Opens a WebSocket to `addr` (from `local` if given) at `path`, Engine.IO v4.
pub(crate) async fn open(
    addr: SocketAddr,
    local: Option<IpAddr>,
    path: &str,
    read_buffer: usize,
) -> anyhow::Result<Ws> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = local {
        // A port still in TIME_WAIT from an earlier run may be taken again: the destination
        // differs or the old connection is over; without this, back-to-back runs run out of ports.
        socket.set_reuseaddr(true)?;
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = socket.connect(addr).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{addr}{path}?EIO=4&transport=websocket");
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, _) = client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// Reads the next text frame, answering pings; `Err` when the connection ends.
pub(crate) async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let frame = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| anyhow!("no frame within {STEP_TIMEOUT:?}"))?;
        match frame {
            Some(Ok(Frame::Text(text))) => {
                if text.as_str() == "2" {
                    ws.send(Frame::text("3")).await?;
                    continue;
                }
                return Ok(text.as_str().to_owned());
            }
            Some(Ok(Frame::Close(_))) | None => bail!("connection closed"),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
        }
    }
}

/// Waits for the Engine.IO open packet.
pub(crate) async fn expect_open(ws: &mut Ws) -> anyhow::Result<()> {
    let text = next_text(ws).await?;
    if !text.starts_with("0{") {
        bail!("expected an open packet, got {}", clip(&text));
    }
    Ok(())
}

/// Connects to namespace `/` (recovering `resume` = (pid, offset) if given). Every event that
/// arrives before the CONNECT reply (a recovery replay) goes to `on_event`.
pub(crate) async fn connect_namespace(
    ws: &mut Ws,
    resume: Option<(&str, Option<&str>)>,
    mut on_event: impl FnMut(&str),
) -> anyhow::Result<SocketIds> {
    let packet = match resume {
        None => "40".to_owned(),
        Some((pid, offset)) => {
            let auth = match offset {
                Some(offset) => serde_json::json!({ "pid": pid, "offset": offset }),
                None => serde_json::json!({ "pid": pid }),
            };
            format!("40{auth}")
        }
    };
    ws.send(Frame::text(packet)).await?;
    loop {
        let text = next_text(ws).await?;
        if let Some(reply) = text.strip_prefix("40") {
            let value: serde_json::Value =
                serde_json::from_str(reply).context("CONNECT reply is not JSON")?;
            let sid = value
                .get("sid")
                .and_then(|s| s.as_str())
                .ok_or_else(|| anyhow!("CONNECT reply without sid"))?;
            return Ok(SocketIds {
                sid: sid.to_owned(),
                pid: value.get("pid").and_then(|p| p.as_str()).map(str::to_owned),
            });
        }
        if text.starts_with("44") {
            bail!("connect_error: {}", clip(&text));
        }
        if text.starts_with("42") {
            on_event(&text);
        }
    }
}

/// Joins `room` and waits for `{ok:true}`; events meanwhile go to `on_event`.
pub(crate) async fn join(
    ws: &mut Ws,
    room: &str,
    mut on_event: impl FnMut(&str),
) -> anyhow::Result<()> {
    let packet = format!("420{}", serde_json::json!(["join", room]));
    ws.send(Frame::text(packet)).await?;
    loop {
        let text = next_text(ws).await?;
        if let Some(ack) = text.strip_prefix("430") {
            if ack.contains("\"ok\":true") {
                return Ok(());
            }
            bail!("join refused: {}", clip(ack));
        }
        if text.starts_with("42") {
            on_event(&text);
        }
    }
}

/// What the load generator reads from one of its own events
/// (`42["bench",{"t":<µs>,"s":<seq>,"k":<step>,"p":"…"},"<offset>"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp<'a> {
    /// When the publisher sent it, µs since the Unix epoch.
    pub(crate) sent_us: u64,
    /// Its sequence number in its room.
    pub(crate) seq: u64,
    /// The measurement step it belongs to.
    pub(crate) step: u64,
    /// The offset (last string argument), when the server adds one.
    pub(crate) offset: Option<&'a str>,
}

/// Scans an event packet for the publisher's stamp; `None` for other events.
pub(crate) fn stamp(text: &str) -> Option<Stamp<'_>> {
    let body = text.strip_prefix("42")?;
    let sent_us = number_after(body, "\"t\":")?;
    let seq = number_after(body, "\"s\":")?;
    let step = number_after(body, "\"k\":")?;
    // The payload object ends with `}`; an offset follows as `,"<id>"]`.
    let tail = &body[body.rfind('}')? + 1..];
    let offset = tail
        .strip_prefix(",\"")
        .and_then(|t| t.strip_suffix("\"]"))
        .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
    Some(Stamp {
        sent_us,
        seq,
        step,
        offset,
    })
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

/// The first characters of a packet, for error messages.
pub(crate) fn clip(text: &str) -> &str {
    let end = text.char_indices().nth(120).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stamp_and_the_offset() {
        let text = r#"42["bench",{"t":1700000000123456,"s":42,"k":3,"p":"xxx"},"1700000000123-7"]"#;
        assert_eq!(
            stamp(text),
            Some(Stamp {
                sent_us: 1_700_000_000_123_456,
                seq: 42,
                step: 3,
                offset: Some("1700000000123-7"),
            })
        );
        let no_offset = r#"42["bench",{"t":1,"s":2,"k":3,"p":""}]"#;
        assert_eq!(stamp(no_offset).map(|s| s.offset), Some(None));
        assert_eq!(stamp(r#"42["other",{"x":1}]"#), None);
        assert_eq!(stamp("430[{\"ok\":true}]"), None);
    }
}
