//! The HTTP long-polling transport: a GET waits for packets, a POST delivers the client's.

use axum::{
    body::Body,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bytes::Bytes;

use super::{
    engine::{EngineHandler, EngineStats, HttpError, Shared, Socket, text_response},
    packet::{Inbound, encode_payload},
    socket::{DisconnectReason, EngineSocket, Handshake, Transport},
};

const TEXT: &str = "text/plain; charset=UTF-8";

/// Opens a polling session; the body is its open packet.
pub(super) fn handshake<H: EngineHandler>(
    engine: &std::sync::Arc<Shared<H>>,
    handshake: Handshake,
) -> Response {
    let socket = engine.open(handshake, Transport::Polling);
    text_response(engine.open_packet(&socket.id, Transport::Polling), TEXT)
}

/// A GET: waits until there is something to send, then sends everything queued.
pub(super) async fn poll<D>(socket: &EngineSocket<D>, stats: &EngineStats) -> Response {
    if !socket.begin_poll() {
        // Two GETs at once: a broken or hostile client. Node closes the session too.
        socket.close(DisconnectReason::Overlap);
        return HttpError::BadRequest.into_response();
    }
    let mut guard = PollGuard {
        socket,
        finished: false,
    };
    let body = loop {
        let writable = socket.writable();
        if let Some(reason) = socket.close_reason() {
            // A client that closed gets a noop (its request simply ends), once; others learn of
            // the close from a close packet.
            if reason == DisconnectReason::ClientClose && !socket.answer_close() {
                break Bytes::from_static(b"6");
            }
            break Bytes::from_static(b"1");
        }
        if socket.is_upgrading() {
            // Ends the request so the client can pause polling and finish the upgrade; queued
            // packets stay for the WebSocket.
            break Bytes::from_static(b"6");
        }
        let packets = socket.take_queued();
        if !packets.is_empty() {
            break encode_payload(&packets);
        }
        writable.await;
    };
    guard.finished = true;
    stats.bytes_written.add(body.len() as u64);
    text_response(body, TEXT)
}

/// Ends the poll; a poll dropped before it finished was abandoned by the client (the
/// connection closed), which ends the session as Node does.
struct PollGuard<'a, D> {
    socket: &'a EngineSocket<D>,
    finished: bool,
}

impl<D> Drop for PollGuard<'_, D> {
    fn drop(&mut self) {
        self.socket.end_poll();
        if !self.finished {
            self.socket.close(DisconnectReason::TransportClose);
        }
    }
}

/// A POST: the client's packets, handled in order before the reply.
pub(super) async fn post<H: EngineHandler>(
    engine: &Shared<H>,
    socket: &Socket<H>,
    body: Body,
) -> Response {
    if socket.is_closed() {
        return HttpError::BadRequest.into_response();
    }
    if !socket.begin_post() {
        socket.close(DisconnectReason::Overlap);
        return HttpError::BadRequest.into_response();
    }
    let _guard = PostGuard(socket);
    let payload = match axum::body::to_bytes(body, engine.config.max_payload).await {
        Ok(payload) => payload,
        Err(error) => {
            tracing::debug!(sid = %socket.id, %error, "polling payload unreadable or too large");
            socket.close(DisconnectReason::PacketParsingError);
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        }
    };
    let packets = match Inbound::parse_payload(payload) {
        Ok(packets) => packets,
        Err(error) => {
            tracing::debug!(sid = %socket.id, %error, "malformed polling payload");
            socket.close(DisconnectReason::PacketParsingError);
            return HttpError::BadRequest.into_response();
        }
    };
    for packet in packets {
        if socket.is_closed() {
            break;
        }
        if let Err(error) = engine.receive(socket, packet) {
            tracing::debug!(sid = %socket.id, %error, "unexpected packet on polling");
            socket.close(DisconnectReason::PacketParsingError);
            return HttpError::BadRequest.into_response();
        }
    }
    text_response("ok", "text/html")
}

struct PostGuard<'a, D>(&'a EngineSocket<D>);

impl<D> Drop for PostGuard<'_, D> {
    fn drop(&mut self) {
        self.0.end_post();
    }
}
