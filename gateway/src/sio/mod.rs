//! Our Socket.IO v5 protocol layer on engineioxide (see docs/architecture.md for why we own it).

pub(crate) mod packet;
mod server;
mod socket;

pub(crate) use server::{Event, HandlerFuture, SioApp, SioConfig, SioServer};
pub(crate) use socket::SioSocket;
#[cfg(test)]
pub(crate) use socket::testing;
