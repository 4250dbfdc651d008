//! The gateway's Socket.IO application: namespace connect (fresh or recovered), `join`/`leave`/
//! `whoami`, and the clean-up (and recovery session) when a socket goes away.

use std::{sync::Arc, time::Duration};

use roomcast_shared::wire::{KeySpace, validate_room};
use serde_json::{Value, json};

use roomcast_shared::wire::{CommandAction, ControlMessage};

use crate::{
    auth::{AuthError, Authenticator, Identity, USER_ROOM_PREFIX, presented_token, user_room},
    eio::{Handshake, Refusal},
    limits::{PerAddress, Rate},
    recovery::{RestoreError, Sessions, recovery_request},
    rooms::{Departure, LocalRooms},
    sio::{Accepted, ConnectRequest, Event, HandlerFuture, SioApp, SioSocket, random_id},
    stats::GatewayStats,
    takeover::Takeovers,
};

pub(crate) struct Gateway {
    pub(crate) rooms: Arc<LocalRooms>,
    pub(crate) keys: KeySpace,
    pub(crate) gateway_id: Arc<str>,
    pub(crate) request_timeout: Duration,
    pub(crate) max_rooms_per_socket: usize,
    /// Connection state recovery; `None` when it is off.
    pub(crate) sessions: Option<Sessions>,
    /// Asking other gateways for sockets they still hold (with recovery on).
    pub(crate) takeovers: Option<Arc<Takeovers>>,
    /// Token verification; `None` when authentication is off.
    pub(crate) auth: Option<Authenticator>,
    /// Whether a recovering client whose token expired while away still recovers.
    pub(crate) skip_middlewares_on_recovery: bool,
    pub(crate) event_rate: Rate,
    pub(crate) connect_limit: PerAddress,
    pub(crate) stats: Arc<GatewayStats>,
}

/// A client's identity as its CONNECT establishes it.
struct Authenticated {
    identity: Option<Arc<Identity>>,
    /// The token was valid but expired: good enough to recover the same user's session
    /// (RECOVERY_SKIP_MIDDLEWARES), not for a fresh one.
    expired: bool,
}

fn refusal(error: impl std::fmt::Display) -> Value {
    json!([{ "ok": false, "error": error.to_string() }])
}

impl Gateway {
    fn room_channel(&self, socket: &SioSocket, room: &str) -> String {
        self.keys.room(socket.nsp(), room).into_channel()
    }

    fn join(&self, socket: &Arc<SioSocket>, event: Event) -> Option<HandlerFuture> {
        let ack = event.ack;
        let room: Arc<str> = match event.args.first() {
            Some(Value::String(room)) => match validate_room(room) {
                Ok(()) => room.as_str().into(),
                Err(error) => return reply(socket, ack, refusal(error)),
            },
            _ => return reply(socket, ack, refusal("room must be a non-empty string")),
        };
        if let Some(identity) = socket.identity()
            && (room.starts_with(USER_ROOM_PREFIX) || !identity.rooms.allows(&room))
        {
            // User rooms are assigned by the gateway only: joining one would read another
            // user's events.
            self.stats.joins_forbidden.inc();
            return reply(socket, ack, refusal("forbidden"));
        }
        let channel = self.room_channel(socket, &room);
        let generation = if socket.add_room(&room) {
            if socket.room_count() > self.max_rooms_per_socket {
                self.stats.joins_over_limit.inc();
                socket.remove_room(&room);
                return reply(
                    socket,
                    ack,
                    refusal(format!(
                        "too many rooms (max {})",
                        self.max_rooms_per_socket
                    )),
                );
            }
            self.rooms.add(&channel, socket, None)
        } else {
            // Already a member; still wait in case an earlier join's subscription is in flight.
            self.rooms.generation()
        };
        let rooms = self.rooms.clone();
        let socket = socket.clone();
        let timeout = self.request_timeout;
        Some(Box::pin(async move {
            // The ack promises delivery: only send it once Redis knows we hold the room.
            if tokio::time::timeout(timeout, rooms.wait_applied(generation))
                .await
                .is_ok()
            {
                if let Some(id) = ack {
                    socket.ack(id, &json!([{ "ok": true }]));
                }
                return;
            }
            tracing::warn!(sid = %socket.id(), room = %room, "join not confirmed by Redis in time");
            if socket.remove_room(&room) {
                rooms.remove(&channel, &socket);
            }
            if let Some(id) = ack {
                socket.ack(
                    id,
                    &refusal(format!(
                        "unavailable: room subscription not confirmed within {} ms",
                        timeout.as_millis()
                    )),
                );
            }
        }))
    }

    fn leave(&self, socket: &Arc<SioSocket>, event: Event) -> Option<HandlerFuture> {
        let room = match event.args.first() {
            Some(Value::String(room)) => match validate_room(room) {
                Ok(()) => room,
                Err(error) => return reply(socket, event.ack, refusal(error)),
            },
            _ => {
                return reply(
                    socket,
                    event.ack,
                    refusal("room must be a non-empty string"),
                );
            }
        };
        if let Some(identity) = socket.identity()
            && *room == user_room(&identity.user)
        {
            // Backends reach a user through this room; the client cannot opt out of it.
            return reply(socket, event.ack, refusal("forbidden"));
        }
        if socket.remove_room(room) {
            self.rooms.remove(&self.room_channel(socket, room), socket);
        }
        reply(socket, event.ack, json!([{ "ok": true }]))
    }

    fn whoami(&self, socket: &Arc<SioSocket>, event: Event) -> Option<HandlerFuture> {
        let rooms: Vec<String> = socket.rooms().iter().map(|r| r.to_string()).collect();
        reply(
            socket,
            event.ack,
            json!([{
                "gateway": &*self.gateway_id,
                "sid": &**socket.id(),
                "nsp": &**socket.nsp(),
                "rooms": rooms,
                "user": socket.identity().map(|i| &*i.user),
            }]),
        )
    }

    /// Tries to restore the session the client asks for; `None` means a fresh session.
    /// `Ok(None)`: continue with a fresh session. `Err`: the session may recover on a retry; the
    /// connection was closed so that the client retries.
    async fn recover(
        &self,
        sessions: &Sessions,
        request: &ConnectRequest,
        user: Option<&str>,
    ) -> Result<Option<Accepted>, String> {
        let Some((pid, offset)) = recovery_request(&request.auth) else {
            return Ok(None);
        };
        let mut restored = sessions.restore(request, &pid, offset, user).await;
        // No session stored: the old connection may still be open somewhere (its client's
        // network vanished without a close), or its session may be on its way to Redis. Ask its
        // gateway to give it up, then try again — whatever the answer: a session whose write
        // landed between the first try and the request is "held" by nobody but stored now.
        if matches!(restored, Ok(None))
            && let Some(takeovers) = &self.takeovers
        {
            takeovers.request(&pid).await;
            restored = sessions.restore(request, &pid, offset, user).await;
        }
        if matches!(restored, Err(RestoreError::WrongUser)) {
            tracing::warn!("a client presented another user's session id; not recovered");
            self.stats.recoveries_wrong_user.inc();
        }
        let counter = if matches!(restored, Ok(Some(_))) {
            &sessions.stats.recoveries
        } else {
            &sessions.stats.recoveries_failed
        };
        counter.inc();
        match restored {
            Ok(Some(accepted)) => {
                tracing::info!(sid = %accepted.socket.id(), "session recovered");
                Ok(Some(accepted))
            }
            Ok(None) => {
                sessions.stats.recoveries_expired.inc();
                tracing::debug!("no session to recover (expired or unknown)");
                Ok(None)
            }
            Err(error) if error.is_transient() => {
                sessions.stats.recoveries_retry.inc();
                tracing::info!(%error, "session not recovered this time; the client will retry");
                Err(format!("unavailable: {error}"))
            }
            Err(error) => {
                if matches!(error, RestoreError::HistoryGone) {
                    sessions.stats.recoveries_history_gone.inc();
                }
                tracing::info!(%error, "session not recovered; starting a fresh one");
                Ok(None)
            }
        }
    }
}

impl Gateway {
    /// Verifies the client's token (when authentication is on); `Err` is the `connect_error`.
    fn authenticate(&self, request: &ConnectRequest) -> Result<Authenticated, String> {
        let Some(auth) = &self.auth else {
            return Ok(Authenticated {
                identity: None,
                expired: false,
            });
        };
        let token = presented_token(&request.auth, request.handshake().authorization.as_deref());
        let verified = match auth.verify(token, false) {
            Ok(identity) => Ok((identity, false)),
            Err(AuthError::Expired)
                if self.skip_middlewares_on_recovery
                    && recovery_request(&request.auth).is_some() =>
            {
                auth.verify(token, true).map(|identity| (identity, true))
            }
            Err(error) => Err(error),
        };
        match verified {
            Ok((identity, expired)) => Ok(Authenticated {
                identity: Some(Arc::new(identity)),
                expired,
            }),
            Err(error) => {
                self.stats.refused_unauthorized.inc();
                tracing::info!(%error, "connect refused");
                Err(error.message())
            }
        }
    }

    fn register(&self, accepted: &Accepted) {
        if let (Some(takeovers), Some(pid)) = (&self.takeovers, &accepted.pid) {
            takeovers.register(pid.clone(), &accepted.socket);
        }
    }

    /// Takes the socket out of all its topics; what it leaves is what its session records.
    fn leave_all(&self, socket: &SioSocket) -> Vec<(Option<String>, Departure)> {
        let mut departures = Vec::new();
        for room in socket.take_rooms() {
            if let Some(d) = self.rooms.remove(&self.room_channel(socket, &room), socket) {
                departures.push((Some(room.to_string()), d));
            }
        }
        if let Some(d) = self
            .rooms
            .remove(self.keys.namespace(socket.nsp()).channel(), socket)
        {
            departures.push((None, d));
        }
        departures
    }

    /// Applies a backend command to this gateway's sockets of `nsp` in any of `rooms` (all of
    /// `nsp` when empty). Commands come from the trusted publish stream: no room checks apply.
    fn apply_command(&self, nsp: &str, rooms: &[String], action: &CommandAction) -> usize {
        let mut sockets: Vec<Arc<SioSocket>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let channels: Vec<String> = if rooms.is_empty() {
            vec![self.keys.namespace(nsp).into_channel()]
        } else {
            rooms
                .iter()
                .map(|r| self.keys.room(nsp, r).into_channel())
                .collect()
        };
        for channel in &channels {
            for socket in self.rooms.members(channel) {
                if seen.insert(socket.id().clone()) {
                    sockets.push(socket);
                }
            }
        }
        for socket in &sockets {
            match action {
                CommandAction::Join { rooms } => {
                    for room in rooms {
                        let room: Arc<str> = room.as_str().into();
                        if socket.add_room(&room) {
                            self.rooms
                                .add(&self.room_channel(socket, &room), socket, None);
                        }
                    }
                }
                CommandAction::Leave { rooms } => {
                    for room in rooms {
                        if socket.remove_room(room) {
                            self.rooms.remove(&self.room_channel(socket, room), socket);
                        }
                    }
                }
                CommandAction::Disconnect { recover: true } => socket.close_connection(),
                CommandAction::Disconnect { recover: false } => socket.disconnect(),
            }
        }
        sockets.len()
    }

    /// Handles a message from another gateway (or from ourselves: requests go to everyone), or
    /// a backend command relayed by the fanout.
    pub(crate) async fn handle_control(&self, message: ControlMessage) {
        if let ControlMessage::Command {
            source_id,
            nsp,
            rooms,
            action,
            ..
        } = &message
        {
            let applied = self.apply_command(nsp, rooms, action);
            self.stats.commands.inc();
            tracing::info!(
                source_id,
                command = action.name(),
                sockets = applied,
                "backend command applied"
            );
            return;
        }
        let Some(takeovers) = &self.takeovers else {
            return;
        };
        match message {
            ControlMessage::Command { .. } => {}
            ControlMessage::Takeover {
                request, from, pid, ..
            } => {
                let held = match (takeovers.holder(&pid), &self.sessions) {
                    (Some(socket), Some(sessions)) => {
                        tracing::info!(sid = %socket.id(), "client reconnected elsewhere; saving its session and closing the old connection");
                        let departures = self.leave_all(&socket);
                        if !departures.is_empty() {
                            sessions.session_write(&socket, &pid, departures).await;
                        }
                        takeovers.unregister(&pid, &socket);
                        socket.close_connection();
                        // Nothing left to save means its disconnect is saving it right now.
                        takeovers.wait_written(&pid).await;
                        true
                    }
                    // Already gone, its session still on its way to Redis: stored once the
                    // write lands, so the requester's retry finds it.
                    _ => takeovers.wait_written(&pid).await,
                };
                takeovers.reply(&from, request, held).await;
            }
            ControlMessage::TakeoverReply { request, held, .. } => {
                takeovers.on_reply(request, held)
            }
        }
    }
}

/// Acks right away (if the client asked) with nothing left to wait for.
fn reply(socket: &SioSocket, ack: Option<u64>, args: Value) -> Option<HandlerFuture> {
    if let Some(id) = ack {
        socket.ack(id, &args);
    }
    None
}

impl SioApp for Gateway {
    fn admit(&self, handshake: &Handshake) -> Result<(), Refusal> {
        if let Some(ip) = handshake.client_ip
            && !self.connect_limit.allow(ip)
        {
            self.stats.refused_rate_limited.inc();
            return Err(Refusal {
                status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                message: "Too many connection attempts",
            });
        }
        Ok(())
    }

    async fn connect(&self, request: ConnectRequest) -> Result<Accepted, String> {
        let Authenticated { identity, expired } = self.authenticate(&request)?;
        let user = identity.as_ref().map(|i| &*i.user);
        if let Some(sessions) = &self.sessions
            && let Some(accepted) = self.recover(sessions, &request, user).await?
        {
            if let Some(identity) = &identity {
                accepted.socket.set_identity(identity.clone());
            }
            self.register(&accepted);
            return Ok(accepted);
        }
        if expired {
            self.stats.refused_unauthorized.inc();
            return Err(AuthError::Expired.message());
        }
        let socket = request.socket(None);
        let mut topics = vec![self.keys.namespace(socket.nsp()).into_channel()];
        if let Some(identity) = identity {
            let room: Arc<str> = user_room(&identity.user).into();
            socket.add_room(&room);
            topics.push(self.room_channel(&socket, &room));
            socket.set_identity(identity);
        }
        let mut generation = 0;
        for channel in &topics {
            generation = generation.max(self.rooms.add(channel, &socket, None));
        }
        // Like a join: the client may publish-and-expect right after `connect`.
        if tokio::time::timeout(self.request_timeout, self.rooms.wait_applied(generation))
            .await
            .is_err()
        {
            for channel in &topics {
                self.rooms.remove(channel, &socket);
            }
            socket.take_rooms();
            return Err("unavailable: gateway cannot reach Redis".into());
        }
        let accepted = Accepted {
            socket,
            pid: self.sessions.as_ref().map(|_| random_id()),
        };
        self.register(&accepted);
        Ok(accepted)
    }

    fn event(&self, socket: &Arc<SioSocket>, event: Event) -> Option<HandlerFuture> {
        if !socket.take_event_token(self.event_rate) {
            self.stats.events_rate_limited.inc();
            return reply(socket, event.ack, refusal("rate limited"));
        }
        match event.name.as_str() {
            "join" => self.join(socket, event),
            "leave" => self.leave(socket, event),
            "whoami" => self.whoami(socket, event),
            _ => None,
        }
    }

    fn disconnect(&self, socket: &Arc<SioSocket>, reason: &'static str) {
        tracing::debug!(sid = %socket.id(), reason, "socket disconnected");
        let departures = self.leave_all(socket);
        // Like Node: a client that said goodbye (or was sent away) does not want its session back. No departures
        // means the socket was already taken over, or replaced by its recovered self on this
        // gateway (same id): the session belongs to the new socket now.
        let save = reason != "client namespace disconnect"
            && reason != "server namespace disconnect"
            && !departures.is_empty();
        match (&self.sessions, socket.pid(), &self.takeovers) {
            (Some(sessions), Some(pid), Some(takeovers)) if save => {
                // Noted before the socket stops being this gateway's: a takeover request that
                // arrives before the write lands waits for it rather than finding nothing.
                let done = takeovers.writing(pid.clone());
                takeovers.unregister(pid, socket);
                let write = sessions.session_write(socket, pid, departures);
                let takeovers = takeovers.clone();
                let pid = pid.clone();
                sessions.writes.spawn(async move {
                    write.await;
                    takeovers.written(&pid, &done);
                });
            }
            (sessions, Some(pid), takeovers) => {
                if let Some(takeovers) = takeovers {
                    takeovers.unregister(pid, socket);
                }
                if let Some(sessions) = sessions
                    && save
                {
                    sessions.save(socket, pid, departures);
                }
            }
            (_, None, _) => {}
        }
    }
}
