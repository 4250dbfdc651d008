//! Taking over a socket whose client already came back elsewhere. A client whose network
//! vanished (no TCP close) reconnects as soon as its own ping timeout fires, often before its old
//! gateway notices anything: no session is stored yet. The new gateway then asks every gateway
//! (`wire::control`) whether one still holds the socket of that `pid`; the holder saves the
//! session and closes the socket, and the new gateway restores it. Every gateway answers, so a
//! `pid` nobody holds costs one round trip, not the timeout.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::aio::ConnectionManager;
use roomcast_shared::wire::{ControlMessage, KeySpace};
use tokio::sync::{oneshot, watch};

use crate::sio::SioSocket;

const CONTROL_VERSION: u8 = 1;

struct Pending {
    expected: Option<usize>,
    answered: usize,
    held: bool,
    done: Option<oneshot::Sender<bool>>,
}

impl Pending {
    fn complete_if_done(&mut self) {
        if (self.held || self.expected.is_some_and(|n| self.answered >= n))
            && let Some(done) = self.done.take()
        {
            let _ = done.send(self.held);
        }
    }
}

pub(crate) struct Takeovers {
    keys: KeySpace,
    gateway_id: Arc<str>,
    commands: ConnectionManager,
    timeout: Duration,
    /// Live sockets by private session id.
    live: Mutex<HashMap<Arc<str>, Weak<SioSocket>>>,
    /// Sessions of sockets that left, whose write to Redis is still in flight: a takeover
    /// request for one waits for it instead of answering "not held" while the session is not
    /// stored yet (the client came back faster than its session was written).
    writing: Mutex<HashMap<Arc<str>, watch::Receiver<bool>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_request: AtomicU64,
}

impl Takeovers {
    pub(crate) fn new(
        keys: KeySpace,
        gateway_id: Arc<str>,
        commands: ConnectionManager,
        timeout: Duration,
    ) -> Self {
        Self {
            keys,
            gateway_id,
            commands,
            timeout,
            live: Mutex::default(),
            writing: Mutex::default(),
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
        }
    }

    /// The channels this gateway must listen to: requests from all, answers to itself.
    pub(crate) fn channels(&self) -> [String; 2] {
        [
            self.keys.control_channel(),
            self.keys.gateway_control_channel(&self.gateway_id),
        ]
    }

    pub(crate) fn register(&self, pid: Arc<str>, socket: &Arc<SioSocket>) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, Arc::downgrade(socket));
    }

    /// Forgets `pid` if it still names this socket (a recovered socket may have replaced it).
    pub(crate) fn unregister(&self, pid: &str, socket: &SioSocket) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live
            .get(pid)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), socket))
        {
            live.remove(pid);
        }
    }

    /// Notes that the session of `pid` is being written; the returned sender marks it stored.
    pub(crate) fn writing(&self, pid: Arc<str>) -> watch::Sender<bool> {
        let (tx, rx) = watch::channel(false);
        self.writing_lock().insert(pid, rx);
        tx
    }

    /// The session of `pid` is stored (or its write gave up).
    pub(crate) fn written(&self, pid: &str, done: &watch::Sender<bool>) {
        let _ = done.send(true);
        let mut writing = self.writing_lock();
        if writing
            .get(pid)
            .is_some_and(|rx| rx.same_channel(&done.subscribe()))
        {
            writing.remove(pid);
        }
    }

    /// Waits (at most the request timeout) for an in-flight write of `pid`'s session; true if
    /// there was one.
    pub(crate) async fn wait_written(&self, pid: &str) -> bool {
        let Some(mut rx) = self.writing_lock().get(pid).cloned() else {
            return false;
        };
        let _ = tokio::time::timeout(self.timeout, rx.wait_for(|stored| *stored)).await;
        true
    }

    fn writing_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, watch::Receiver<bool>>> {
        self.writing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live socket of `pid` on this gateway, if any.
    pub(crate) fn holder(&self, pid: &str) -> Option<Arc<SioSocket>> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pid)
            .and_then(Weak::upgrade)
    }

    /// Asks every gateway to give up the socket of `pid`. True when one did (its session is
    /// stored now).
    pub(crate) async fn request(&self, pid: &str) -> bool {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending_lock().insert(
            request,
            Pending {
                expected: None,
                answered: 0,
                held: false,
                done: Some(tx),
            },
        );
        let message = ControlMessage::Takeover {
            v: CONTROL_VERSION,
            request,
            from: self.gateway_id.to_string(),
            pid: pid.to_owned(),
        };
        let sent: redis::RedisResult<usize> = redis::cmd("PUBLISH")
            .arg(self.keys.control_channel())
            .arg(message.encode())
            .query_async(&mut self.commands.clone())
            .await;
        match sent {
            Ok(0) | Err(_) => {
                self.pending_lock().remove(&request);
                return false;
            }
            Ok(receivers) => {
                if let Some(p) = self.pending_lock().get_mut(&request) {
                    p.expected = Some(receivers);
                    p.complete_if_done();
                }
            }
        }
        let held = matches!(tokio::time::timeout(self.timeout, rx).await, Ok(Ok(true)));
        self.pending_lock().remove(&request);
        held
    }

    /// One gateway's answer to one of our requests.
    pub(crate) fn on_reply(&self, request: u64, held: bool) {
        if let Some(p) = self.pending_lock().get_mut(&request) {
            p.answered += 1;
            p.held |= held;
            p.complete_if_done();
        }
    }

    /// Answers a request of gateway `to`.
    pub(crate) async fn reply(&self, to: &str, request: u64, held: bool) {
        let message = ControlMessage::TakeoverReply {
            v: CONTROL_VERSION,
            request,
            held,
        };
        let sent = redis::cmd("PUBLISH")
            .arg(self.keys.gateway_control_channel(to))
            .arg(message.encode())
            .query_async::<usize>(&mut self.commands.clone())
            .await;
        if let Err(error) = sent {
            tracing::warn!(%error, to, "could not answer a takeover request");
        }
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
