//! The WebSocket transport: new sessions over WebSocket, and the upgrade of a polling session
//! (`2probe` → `3probe`, then `5`).

use std::{collections::VecDeque, sync::Arc, time::Duration};

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message as Frame, Utf8Bytes,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};

use super::{
    engine::{EngineHandler, HttpError, Shared, Socket},
    packet::{Inbound, Outbound},
    socket::{DisconnectReason, Handshake, Transport},
};

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// How long a closing WebSocket may take to send its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a WebSocket handshake: a new session, or the upgrade of polling session `sid`.
pub(super) fn upgrade<H: EngineHandler>(
    engine: Arc<Shared<H>>,
    mut req: Request,
    sid: Option<&str>,
) -> Response {
    if req.method() != Method::GET {
        return HttpError::BadHandshakeMethod.into_response();
    }
    let Some(accept) = accept_key(req.headers()) else {
        return HttpError::BadRequest.into_response();
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return HttpError::BadRequest.into_response();
    };
    let existing = match sid {
        None => match engine.admit(&req) {
            Ok(handshake) => Target::New(handshake),
            Err(refusal) => return refusal.into_response(),
        },
        Some(sid) => match engine.session(sid) {
            None => return HttpError::UnknownSid.into_response(),
            Some(socket) if socket.is_closed() => return HttpError::BadRequest.into_response(),
            // Already upgraded, or another WebSocket is upgrading it: like Node, this one is
            // accepted and closed at once.
            Some(socket) if socket.transport() != Transport::Polling || !socket.claim_upgrade() => {
                Target::Refused
            }
            Some(socket) => Target::Upgrade(socket),
        },
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                if let Target::Upgrade(socket) = &existing {
                    socket.release_upgrade();
                }
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(engine.config.ws_read_buffer_size)
            .write_buffer_size(0)
            .max_message_size(Some(engine.config.max_payload))
            .max_frame_size(Some(engine.config.max_payload));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match existing {
            Target::New(handshake) => open(engine, handshake, ws).await,
            Target::Upgrade(socket) => upgrade_session(engine, socket, ws).await,
            Target::Refused => {
                let mut ws = ws;
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
            }
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
}

/// What an accepted WebSocket is for.
enum Target<S> {
    New(Handshake),
    Upgrade(S),
    Refused,
}

/// The `Sec-WebSocket-Accept` value for a valid WebSocket handshake request.
fn accept_key(headers: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return None;
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION)? != "13" {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}

/// A session that starts on WebSocket: the open packet, then the session.
async fn open<H: EngineHandler>(engine: Arc<Shared<H>>, handshake: Handshake, mut ws: Ws) {
    let socket = engine.open(handshake, Transport::Websocket);
    let packet = engine.open_packet(&socket.id, Transport::Websocket);
    if ws.send(Frame::Text(packet.into())).await.is_err() {
        socket.close(DisconnectReason::TransportError);
        return;
    }
    run(&engine, &socket, ws).await;
}

/// Moves a polling session to this WebSocket once the client has probed it and confirmed.
async fn upgrade_session<H: EngineHandler>(engine: Arc<Shared<H>>, socket: Socket<H>, mut ws: Ws) {
    let handshake = async {
        expect(&mut ws, Inbound::Ping { probe: true }).await?;
        ws.send(Frame::Text(Utf8Bytes::from_static("3probe")))
            .await
            .ok()?;
        socket.set_upgrading(true);
        expect(&mut ws, Inbound::Upgrade).await
    };
    let upgraded = tokio::select! {
        _ = socket.closed() => None,
        done = tokio::time::timeout(engine.config.upgrade_timeout, handshake) => done.ok().flatten(),
    };
    if upgraded.is_none() {
        tracing::debug!(sid = %socket.id, "WebSocket upgrade abandoned; staying on polling");
        socket.set_upgrading(false);
        socket.release_upgrade();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
        return;
    }
    socket.set_transport(Transport::Websocket);
    socket.set_upgrading(false);
    tracing::trace!(sid = %socket.id, "upgraded to WebSocket");
    run(&engine, &socket, ws).await;
}

/// Waits for one text packet during the upgrade; `None` if it is anything else.
async fn expect(ws: &mut Ws, wanted: Inbound) -> Option<()> {
    loop {
        match ws.next().await? {
            Ok(Frame::Text(text)) => {
                return (Inbound::parse(text.into()).ok()? == wanted).then_some(());
            }
            Ok(Frame::Ping(_) | Frame::Pong(_)) => {}
            _ => return None,
        }
    }
}

/// Serves the session over the WebSocket until it ends: writes what is queued, reads what comes.
/// Closing the session wakes the writer too, so the loop learns of it without polling the
/// session's cancellation token (a lock) on every turn.
async fn run<H: EngineHandler>(engine: &Shared<H>, socket: &Socket<H>, mut ws: Ws) {
    loop {
        let writable = socket.writable();
        tokio::pin!(writable);
        // Registered before looking at the queue, so nothing queued meanwhile is missed.
        writable.as_mut().enable();
        if socket.is_closed() {
            break;
        }
        let queued = socket.take_queued();
        if !queued.is_empty() {
            let written = write(&mut ws, queued, &engine.stats.bytes_written);
            tokio::pin!(written);
            let result = loop {
                tokio::select! {
                    biased;
                    result = &mut written => break Some(result),
                    // A wake-up while writing: new packets wait for the next turn, a close ends
                    // a write the client may never read.
                    _ = &mut writable => {
                        if socket.is_closed() {
                            break None;
                        }
                        writable.set(socket.writable());
                        writable.as_mut().enable();
                    }
                }
            };
            match result {
                None => break,
                Some(Ok(())) => continue,
                Some(Err(error)) => {
                    tracing::debug!(sid = %socket.id, %error, "WebSocket write failed");
                    socket.close(DisconnectReason::TransportError);
                    break;
                }
            }
        }
        tokio::select! {
            biased;
            _ = &mut writable => {}
            frame = ws.next() => {
                let packet = match frame {
                    Some(Ok(Frame::Text(text))) => Inbound::parse(text.into()),
                    Some(Ok(Frame::Binary(data))) => Ok(Inbound::Binary(data)),
                    Some(Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_))) => continue,
                    Some(Ok(Frame::Close(_))) | None => {
                        socket.close(DisconnectReason::TransportClose);
                        break;
                    }
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(error))) => {
                        tracing::debug!(sid = %socket.id, %error, "message over MAX_PAYLOAD");
                        socket.close(DisconnectReason::PacketParsingError);
                        break;
                    }
                    Some(Err(error)) => {
                        tracing::debug!(sid = %socket.id, %error, "WebSocket read failed");
                        socket.close(DisconnectReason::TransportError);
                        break;
                    }
                };
                if let Err(error) = packet.and_then(|p| engine.receive(socket, p)) {
                    tracing::debug!(sid = %socket.id, %error, "malformed packet on WebSocket");
                    socket.close(DisconnectReason::PacketParsingError);
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
}

/// Writes packets as frames, then flushes once.
async fn write(
    ws: &mut Ws,
    packets: VecDeque<Outbound>,
    bytes_written: &roomcast_shared::counter::Counter,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut bytes = 0;
    for packet in packets {
        let frame = match packet {
            Outbound::Message(m) => Frame::Text(m.frame().clone()),
            Outbound::Binary(data) => Frame::Binary(data),
            Outbound::Ping => Frame::Text(Utf8Bytes::from_static("2")),
            Outbound::Pong => Frame::Text(Utf8Bytes::from_static("3")),
        };
        bytes += frame.len();
        ws.feed(frame).await?;
    }
    ws.flush().await?;
    bytes_written.add(bytes as u64);
    Ok(())
}
