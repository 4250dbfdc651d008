//! Our Socket.IO v5 protocol layer on our Engine.IO layer (`crate::eio`) (see docs/architecture.md for why we own it).
//! Public so that other servers built from the same code (the protocol conformance server in
//! `tests`) can use it with their own [`SioApp`].

// Public for the fuzz targets in fuzz/ only; not an API.
#[doc(hidden)]
pub mod packet;
mod server;
mod socket;

pub use server::{
    Accepted, ConnectRequest, Event, HandlerFuture, SioApp, SioConfig, SioServer, SioStats,
};
#[cfg(test)]
pub(crate) use socket::testing;
pub use socket::{ConnData, EngineSocket, SioSocket, random_id};
