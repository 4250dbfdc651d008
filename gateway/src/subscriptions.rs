//! Keeps Redis in step with the local room registry: SUBSCRIBE a topic's channel while this
//! gateway holds a member, publish our member count per topic, UNSUBSCRIBE after the last one
//! leaves. Changes are applied in batches (one SUBSCRIBE, one pipeline, one UNSUBSCRIBE per
//! round). Owns the pub/sub connection and resubscribes everything after it is lost.

use std::{collections::HashSet, sync::Arc};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use roomcast_shared::{
    health::Readiness,
    redis_conn::Backoff,
    wire::{KeySpace, Topic},
};
use tokio_util::sync::CancellationToken;

use crate::{delivery::Delivery, rooms::LocalRooms};

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
            let mut delivery = tokio::spawn(deliver_loop(
                stream,
                Delivery::new(self.rooms.clone(), self.keys.clone()),
            ));
            // A new connection has no subscriptions: rewrite everything.
            let mut subscribed: HashSet<Arc<str>> = HashSet::new();
            let mut full = true;
            loop {
                match self.reconcile(&mut sink, &mut subscribed, full).await {
                    Ok(()) => {
                        if full {
                            tracing::info!(topics = subscribed.len(), "subscriptions in place");
                            outage_logged = false;
                        }
                        full = false;
                        backoff.reset();
                        self.readiness.set(READY_SUBSCRIPTIONS, true);
                    }
                    Err(error) => {
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
                }
            }
            self.readiness.set(READY_SUBSCRIPTIONS, false);
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
        for (channel, count) in changes.topics {
            let members = Topic::from_channel(&*channel).members_key();
            if count > 0 {
                pipe.hset(&members, &*self.gateway_id, count).ignore();
                pipe.sadd(&own_topics, &*channel).ignore();
                if changes.full || !subscribed.contains(&channel) {
                    to_subscribe.push(channel);
                }
            } else {
                pipe.hdel(&members, &*self.gateway_id).ignore();
                pipe.srem(&own_topics, &*channel).ignore();
                if subscribed.contains(&channel) {
                    to_unsubscribe.push(channel);
                }
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

/// Reads the subscription connection until it closes, delivering each message.
async fn deliver_loop(mut stream: PubSubStream, mut delivery: Delivery) {
    while let Some(msg) = stream.next().await {
        delivery.deliver(msg.get_channel_name(), msg.get_payload_bytes());
    }
}
