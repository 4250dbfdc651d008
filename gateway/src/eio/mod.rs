//! Our Engine.IO v4 server (long-polling and WebSocket, with upgrade), on axum and
//! tokio-tungstenite. We own it instead of using engineioxide because the official conformance
//! suite must pass (engineioxide pings at once on connect, Node after `pingInterval`, and keeps a
//! session whose long-poll was abandoned), and because the gateway needs control of every
//! per-connection buffer and of how a broadcast is queued: a [`Message`] is encoded once and
//! shared by every recipient. See docs/architecture.md.

mod cors;
mod engine;
mod packet;
mod polling;
mod socket;
mod ws;

pub use cors::AllowedOrigins;
pub use engine::{Engine, EngineConfig, EngineHandler, EngineStats, Refusal};
pub use packet::{Message, PacketError, Str};
// Public for the fuzz targets in fuzz/ only; not an API.
#[doc(hidden)]
pub use packet::{Inbound, Outbound, encode_payload};
pub use socket::{DisconnectReason, EmitError, EngineSocket, Handshake, Transport};
