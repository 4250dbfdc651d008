//! The buffer that holds a recovering socket's live messages until its replay is written, so
//! nothing overtakes the replay.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use crate::eio::Message;
use roomcast_shared::wire::StreamId;

use crate::{recovery::RestoreError, sio::SioSocket};

/// Live messages a recovering socket may accumulate while its replay is read.
const MAX_BUFFERED: usize = 10_000;

/// A live message held back while a socket's replay is being written.
pub(crate) struct Buffered {
    pub(crate) channel: Arc<str>,
    pub(crate) seq: u64,
    pub(crate) src: StreamId,
    pub(crate) packet: Message,
}

enum ReplayState {
    Buffering {
        items: Vec<Buffered>,
        overflowed: bool,
    },
    Live,
}

/// Holds live messages for a recovering socket so they cannot overtake the replay.
pub(crate) struct ReplayBuffer {
    state: Mutex<ReplayState>,
}

impl ReplayBuffer {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ReplayState::Buffering {
                items: Vec::new(),
                overflowed: false,
            }),
        })
    }

    /// Buffers the message while the replay is pending; once live, hands the packet back for
    /// the caller to emit.
    pub(crate) fn offer(&self, item: Buffered) -> Option<Message> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *state {
            ReplayState::Buffering { items, overflowed } => {
                if items.len() < MAX_BUFFERED {
                    items.push(item);
                } else {
                    *overflowed = true;
                }
                None
            }
            ReplayState::Live => Some(item.packet),
        }
    }

    /// Takes the buffered messages with a source id up to `upto` out of the buffer (while it
    /// still buffers), so the replay can send them in publish order with the history entries.
    pub(crate) fn take_upto(&self, upto: StreamId) -> Vec<Buffered> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *state {
            ReplayState::Buffering { items, .. } => {
                let (taken, kept): (Vec<Buffered>, Vec<Buffered>) = std::mem::take(items)
                    .into_iter()
                    .partition(|i| i.src <= upto);
                *items = kept;
                taken
            }
            ReplayState::Live => Vec::new(),
        }
    }

    /// Emits the buffered messages the replay did not cover, then turns live. Drains in chunks
    /// without holding the lock while waiting for the client; messages arriving meanwhile join
    /// the buffer, and the switch to live happens under the lock once it is empty, so nothing
    /// overtakes anything.
    pub(crate) async fn finish(
        &self,
        socket: &SioSocket,
        skip: impl Fn(&Buffered) -> bool,
        patience: Duration,
    ) -> Result<(), RestoreError> {
        loop {
            let chunk = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                match &mut *state {
                    ReplayState::Live => return Ok(()),
                    ReplayState::Buffering {
                        overflowed: true, ..
                    } => {
                        *state = ReplayState::Live;
                        return Err(RestoreError::Overflow);
                    }
                    ReplayState::Buffering { items, .. } if items.is_empty() => {
                        *state = ReplayState::Live;
                        return Ok(());
                    }
                    ReplayState::Buffering { items, .. } => std::mem::take(items),
                }
            };
            for item in chunk.into_iter().filter(|i| !skip(i)) {
                socket
                    .emit_patiently(item.packet, patience)
                    .await
                    .map_err(|_| RestoreError::ClientGone)?;
            }
        }
    }
}
