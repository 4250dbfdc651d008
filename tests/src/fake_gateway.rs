//! A stand-in for a gateway at the Redis level: it holds topics (registers a member count in
//! `<topic>:members`) and receives the envelopes the fanout publishes on their channels.

use futures_util::StreamExt as _;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use roomcast_shared::wire::{Envelope, Topic};

use crate::{RedisServer, wait::within};

pub struct FakeGateway {
    id: String,
    conn: MultiplexedConnection,
    sink: PubSubSink,
    messages: PubSubStream,
}

impl FakeGateway {
    /// Connects a command and a pub/sub connection to `redis` as gateway `id`.
    pub async fn connect(redis: &RedisServer, id: &str) -> anyhow::Result<Self> {
        let conn = redis.connection().await?;
        let (sink, messages) = redis.client().get_async_pubsub().await?.split();
        Ok(Self {
            id: id.to_owned(),
            conn,
            sink,
            messages,
        })
    }

    /// Subscribes to the topic's channel, then registers one local member in its members hash,
    /// as a gateway does when a socket joins (in that order, so no publish is missed).
    pub async fn hold(&mut self, topic: &Topic) -> anyhow::Result<()> {
        self.subscribe(topic).await?;
        redis::cmd("HSET")
            .arg(topic.members_key())
            .arg(&self.id)
            .arg(1)
            .query_async::<()>(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Subscribes to the topic's channel without holding it (to observe that nothing arrives).
    pub async fn subscribe(&mut self, topic: &Topic) -> anyhow::Result<()> {
        self.sink.subscribe(topic.channel()).await?;
        Ok(())
    }

    /// The next message on any subscribed channel: its channel and decoded envelope. Panics if
    /// none arrives within the test deadline or it does not decode.
    pub async fn next_envelope(&mut self) -> (String, Envelope) {
        let msg = within("an envelope on a subscribed channel", self.messages.next())
            .await
            .expect("the pub/sub connection closed");
        let envelope = Envelope::decode(msg.get_payload_bytes())
            .unwrap_or_else(|e| panic!("undecodable envelope on {}: {e}", msg.get_channel_name()));
        (msg.get_channel_name().to_owned(), envelope)
    }
}
