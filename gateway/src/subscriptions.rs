//! Keeps Redis in step with the local room registry: SUBSCRIBE a topic's channel while this
//! gateway holds a member, publish our member count per topic, UNSUBSCRIBE after the last one
//! leaves. Changes are applied in batches (one SUBSCRIBE, one pipeline, one UNSUBSCRIBE per
//! round). Owns the pub/sub connection and resubscribes everything after it is lost.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use roomcast_shared::{
    health::Readiness,
    redis_conn::Backoff,
    wire::{ControlMessage, KeySpace, Position, StreamId, TOPIC_LEAVE_LUA, Topic, meta_ttl_ms},
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    delivery::{Delivery, Dispatcher},
    order::{Orderer, SharedMarks},
    rooms::LocalRooms,
    stats::GatewayStats,
};

/// Channels per SUBSCRIBE/UNSUBSCRIBE command, to bound one command's size.
const CHANNELS_PER_COMMAND: usize = 1_000;
pub(crate) const READY_SUBSCRIPTIONS: &str = "subscriptions";

pub(crate) struct Subscriptions {
    pub(crate) client: redis::Client,
    pub(crate) commands: ConnectionManager,
    pub(crate) keys: KeySpace,
    pub(crate) gateway_id: Arc<str>,
    pub(crate) rooms: Arc<LocalRooms>,
    pub(crate) readiness: Readiness,
    /// The recovery window, in ms (0: recovery off). With recovery on, deliveries carry offsets
    /// and gaps are repaired, and a topic this gateway stops holding keeps its history for the
    /// window (its last member may come back through any gateway).
    pub(crate) window_ms: u64,
    /// Channels for gateway-to-gateway requests, subscribed for as long as the connection lives;
    /// their messages go to `control` instead of delivery.
    pub(crate) control_channels: Vec<String>,
    pub(crate) control: mpsc::Sender<ControlMessage>,
    /// How often the subscription connection is PINGed to prove it still delivers.
    pub(crate) probe_interval: Duration,
    pub(crate) stats: Arc<GatewayStats>,
    /// Delivery in publish order across fanout partitions (`order`); `None`: off.
    pub(crate) order: Option<OrderSettings>,
}

/// What the orderer of each subscription connection starts from.
pub(crate) struct OrderSettings {
    pub(crate) max_wait: Duration,
    pub(crate) max_held: usize,
    /// The fanout partitions' progress, kept across connections.
    pub(crate) marks: SharedMarks,
    /// How far messages were released; recoveries wait on it.
    pub(crate) released: watch::Sender<StreamId>,
}

impl Subscriptions {
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut outage_logged = false;
        while !shutdown.is_cancelled() {
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.client.get_async_pubsub() => r,
            };
            let (mut sink, stream) = match pubsub {
                Ok(pubsub) => pubsub.split(),
                Err(error) => {
                    self.stats.redis_errors.inc();
                    if !outage_logged {
                        tracing::warn!(%error, "cannot open the Redis subscription connection; retrying");
                        outage_logged = true;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            let dispatch =
                Dispatcher::new(self.rooms.clone(), self.keys.clone(), self.window_ms > 0);
            let (resubscribed, resubscribed_rx) = oneshot::channel();
            let mut resubscribed = Some(resubscribed);
            let (orderer, released) = match &self.order {
                Some(o) => (
                    Some(Orderer::new(o.marks.clone(), o.max_wait, o.max_held)),
                    o.released.clone(),
                ),
                None => (None, watch::Sender::new(StreamId::default())),
            };
            let progress_channel = self.keys.fanout_progress_channel();
            let mut delivery = tokio::spawn(deliver_loop(
                stream,
                Delivery::new(
                    dispatch,
                    self.commands.clone(),
                    self.stats.clone(),
                    orderer,
                    released,
                ),
                resubscribed_rx,
                Control {
                    channels: self.control_channels.clone(),
                    tx: self.control.clone(),
                },
                progress_channel.clone(),
            ));
            // Channels for the life of the connection: the other gateways' requests and the
            // fanout's progress (what the orderer waits for).
            let mut fixed = self.control_channels.clone();
            if self.order.is_some() {
                fixed.push(progress_channel);
            }
            if !fixed.is_empty()
                && let Err(error) = sink.subscribe(&fixed).await
            {
                tracing::warn!(%error, "cannot subscribe to the control and progress channels; reconnecting");
                delivery.abort();
                continue;
            }
            // A new connection has no subscriptions: rewrite everything.
            let mut subscribed: HashSet<Arc<str>> = HashSet::new();
            let mut full = true;
            let mut probe = tokio::time::interval(self.probe_interval);
            probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            probe.tick().await;
            loop {
                match self.reconcile(&mut sink, &mut subscribed, full).await {
                    Ok(()) => {
                        if full {
                            tracing::info!(topics = subscribed.len(), "subscriptions in place");
                            outage_logged = false;
                            // Now that we listen again, fetch what was missed while we did not.
                            if let Some(tx) = resubscribed.take() {
                                let _ = tx.send(());
                            }
                        }
                        full = false;
                        backoff.reset();
                        self.readiness.set(READY_SUBSCRIPTIONS, true);
                    }
                    Err(error) => {
                        self.stats.redis_errors.inc();
                        tracing::warn!(%error, "applying room subscriptions failed; reconnecting");
                        break;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        delivery.abort();
                        return;
                    }
                    _ = &mut delivery => {
                        tracing::warn!("Redis subscription connection lost; resubscribing");
                        break;
                    }
                    _ = self.rooms.changed() => {}
                    _ = probe.tick() => {
                        // A connection can die silently (half-open TCP, a proxy): /readyz would
                        // stay green while nothing is delivered. A PING answered proves it works.
                        let pong = tokio::time::timeout(self.probe_interval, sink.ping::<redis::Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            self.stats.probe_failures.inc();
                            tracing::warn!("Redis subscription connection does not answer; reconnecting");
                            break;
                        }
                    }
                }
            }
            self.readiness.set(READY_SUBSCRIPTIONS, false);
            self.stats.subscription_reconnects.inc();
            delivery.abort();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Applies one batch of changes. On error the caller reconnects and rewrites everything,
    /// so a half-applied batch is never left behind.
    async fn reconcile(
        &mut self,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<Arc<str>>,
        full: bool,
    ) -> redis::RedisResult<()> {
        let changes = self.rooms.take_changes(full);
        if changes.topics.is_empty() {
            self.rooms.mark_applied(changes.generation);
            return Ok(());
        }
        let own_topics = self.keys.gateway_topics(&self.gateway_id);
        let mut to_subscribe = Vec::new();
        let mut to_unsubscribe = Vec::new();
        let mut pipe = redis::pipe();
        if changes.full {
            // Start our topic set afresh so it lists exactly what we hold.
            pipe.del(&own_topics).ignore();
        }
        // Loaded once per batch; each leave then goes as EVALSHA rather than the whole script.
        let leave = redis::Script::new(TOPIC_LEAVE_LUA);
        let mut leave_loaded = false;
        let meta_ttl = meta_ttl_ms(self.window_ms);
        for (channel, count) in changes.topics {
            let topic = Topic::from_channel(&*channel);
            if count > 0 {
                pipe.hset(topic.members_key(), &*self.gateway_id, count)
                    .ignore();
                // Held again: the sequence must outlive any expiry a last leaver gave it.
                pipe.persist(topic.meta_key()).ignore();
                pipe.sadd(&own_topics, &*channel).ignore();
                if changes.full || !subscribed.contains(&channel) {
                    to_subscribe.push(channel);
                }
            } else {
                if !leave_loaded {
                    pipe.load_script(&leave).ignore();
                    leave_loaded = true;
                }
                // Hold first, then the count (so that at every instant the topic is held or on
                // hold, and the fanout never drops a message a recovering socket will ask for);
                // the last holder out starts the meta's expiry.
                pipe.invoke_script(
                    leave
                        .key(topic.members_key())
                        .key(topic.hold_key())
                        .key(topic.meta_key())
                        .arg(&*self.gateway_id)
                        .arg(self.window_ms)
                        .arg(meta_ttl),
                )
                .ignore();
                pipe.srem(&own_topics, &*channel).ignore();
                if subscribed.contains(&channel) {
                    to_unsubscribe.push(channel);
                }
            }
        }
        // A topic's position is read before subscribing: a message published in between then
        // shows up as a gap (seq jump) and is repaired from history, instead of going unnoticed.
        let unpositioned = self.rooms.unpositioned(&to_subscribe);
        if !unpositioned.is_empty() {
            let mut positions = redis::pipe();
            for channel in &unpositioned {
                positions
                    .cmd("HMGET")
                    .arg(Topic::from_channel(&**channel).meta_key())
                    .arg("seq")
                    .arg("src");
            }
            let replies: Vec<(Option<u64>, Option<String>)> =
                positions.query_async(&mut self.commands).await?;
            for (channel, (seq, src)) in unpositioned.iter().zip(replies) {
                let src = src.as_deref().and_then(StreamId::parse).unwrap_or_default();
                self.rooms.init_position(
                    channel,
                    Position {
                        seq: seq.unwrap_or(0),
                        src,
                    },
                );
            }
        }
        // Subscribe before announcing membership: once the fanout sees our count it publishes,
        // and we must already be listening.
        for chunk in to_subscribe.chunks(CHANNELS_PER_COMMAND) {
            let names: Vec<&str> = chunk.iter().map(|c| &**c).collect();
            sink.subscribe(&names).await?;
            subscribed.extend(chunk.iter().cloned());
        }
        pipe.query_async::<()>(&mut self.commands).await?;
        for chunk in to_unsubscribe.chunks(CHANNELS_PER_COMMAND) {
            let names: Vec<&str> = chunk.iter().map(|c| &**c).collect();
            sink.unsubscribe(&names).await?;
            for c in chunk {
                subscribed.remove(c);
            }
        }
        tracing::debug!(
            subscribed = subscribed.len(),
            generation = changes.generation,
            "room subscriptions applied"
        );
        self.rooms.mark_applied(changes.generation);
        Ok(())
    }
}

/// Reads the subscription connection until it closes, delivering each message. Once the
/// subscriptions of a reconnect are in place, first repairs what every topic missed.
/// Where messages on the control channels go.
struct Control {
    channels: Vec<String>,
    tx: mpsc::Sender<ControlMessage>,
}

async fn deliver_loop(
    mut stream: PubSubStream,
    mut delivery: Delivery,
    resubscribed: oneshot::Receiver<()>,
    control: Control,
    progress_channel: String,
) {
    let mut resubscribed = Some(resubscribed);
    loop {
        let deadline = delivery.next_deadline();
        tokio::select! {
            biased;
            done = async {
                match resubscribed.as_mut() {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            }, if resubscribed.is_some() => {
                resubscribed = None;
                if done.is_ok() {
                    delivery.repair_all().await;
                }
            }
            // A held message waited as long as it may.
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => delivery.release_ready().await,
            msg = stream.next() => {
                let Some(msg) = msg else { return };
                let channel = msg.get_channel_name();
                if channel == progress_channel {
                    delivery.progress(msg.get_payload_bytes()).await;
                    continue;
                }
                if control.channels.iter().any(|c| c == channel) {
                    match ControlMessage::decode(msg.get_payload_bytes()) {
                        // Full means requests pile up faster than they are served; the requester
                        // then times out and its client starts a fresh session.
                        Ok(message) => { let _ = control.tx.try_send(message); }
                        Err(error) => tracing::warn!(%error, channel, "undecodable control message"),
                    }
                    continue;
                }
                delivery.deliver(channel, msg.get_payload_bytes()).await;
            }
        }
    }
}
