//! Gateway liveness and membership clean-up against a real Redis: a dead gateway's room counts
//! are reaped by a live one, a restarted gateway clears what its previous process left, and a
//! clean shutdown removes its own entries. (Client-facing behaviour is covered end to end with
//! the official clients in `tests/e2e`.)

use redis::AsyncCommands as _;
use roomcast_shared::wire::KeySpace;
use roomcast_tests::{InProcessGateway, RedisServer, eventually, http_get};

const FAST_BEAT: [&str; 4] = ["--heartbeat-interval", "50", "--gateway-ttl", "500"];

fn config(redis: &RedisServer, id: &str) -> roomcast_gateway::GatewayConfig {
    let mut extra = vec!["--gateway-id", id];
    extra.extend(FAST_BEAT);
    InProcessGateway::config(&redis.url(), &extra)
}

#[tokio::test]
async fn a_dead_gateways_memberships_are_reaped_by_a_live_one() -> anyhow::Result<()> {
    let redis = RedisServer::spawn().await?;
    let mut conn = redis.connection().await?;
    let keys = KeySpace::new("socket.io");
    let room = keys.room("/", "chat:1");
    let solo = keys.room("/", "only-gw-dead");
    let far_future = u64::MAX / 2;
    // gw-dead stopped heartbeating long ago; gw-other is alive.
    let _: () = redis::pipe()
        .zadd(keys.gateways(), "gw-dead", 1)
        .zadd(keys.gateways(), "gw-other", far_future)
        .sadd(keys.gateway_topics("gw-dead"), room.channel())
        .sadd(keys.gateway_topics("gw-dead"), solo.channel())
        .hset(room.members_key(), "gw-dead", 3)
        .hset(room.members_key(), "gw-other", 1)
        .hset(solo.members_key(), "gw-dead", 2)
        .hset(room.meta_key(), "seq", 7)
        .hset(solo.meta_key(), "seq", 9)
        .query_async(&mut conn)
        .await?;

    let gateway = InProcessGateway::start(config(&redis, "gw-live")).await?;

    eventually("gw-dead's room count is removed", || {
        let mut conn = conn.clone();
        let members = room.members_key();
        async move {
            let m: std::collections::HashMap<String, u64> = conn.hgetall(members).await.ok()?;
            (m.len() == 1 && m.get("gw-other") == Some(&1)).then_some(())
        }
    })
    .await;
    // A topic somebody still holds keeps its sequence; one nobody holds any more lets it expire
    // (after the recovery window, at least a minute), instead of keeping it forever.
    let held_ttl: i64 = conn.pttl(room.meta_key()).await?;
    assert_eq!(held_ttl, -1, "still held by gw-other: no expiry");
    let solo_ttl: i64 = eventually("the unheld topic's meta gets an expiry", || {
        let mut conn = conn.clone();
        let meta = solo.meta_key();
        async move {
            let ttl: i64 = conn.pttl(meta).await.ok()?;
            (ttl > 0).then_some(ttl)
        }
    })
    .await;
    let window = roomcast_shared::wire::meta_ttl_ms(120_000) as i64;
    assert!(solo_ttl <= window, "{solo_ttl} ms > {window} ms");
    let dead_score: Option<u64> = conn.zscore(keys.gateways(), "gw-dead").await?;
    assert_eq!(dead_score, None, "the dead gateway leaves the live set");
    let dead_topics: bool = conn.exists(keys.gateway_topics("gw-dead")).await?;
    assert!(!dead_topics, "its topic list is deleted");
    let live: Option<u64> = conn.zscore(keys.gateways(), "gw-live").await?;
    assert!(live.is_some(), "the live gateway heartbeats");

    gateway.stop().await?;
    let live: Option<u64> = conn.zscore(keys.gateways(), "gw-live").await?;
    assert_eq!(
        live, None,
        "a clean shutdown removes the gateway's own entry"
    );
    Ok(())
}

#[tokio::test]
async fn a_restarted_gateway_clears_what_its_previous_process_left() -> anyhow::Result<()> {
    let redis = RedisServer::spawn().await?;
    let mut conn = redis.connection().await?;
    let keys = KeySpace::new("socket.io");
    let room = keys.room("/", "left-behind");
    // A crashed process with the same id left a count behind and was never reaped (its
    // heartbeat has not expired yet).
    let _: () = redis::pipe()
        .zadd(keys.gateways(), "gw-a", u64::MAX / 2)
        .sadd(keys.gateway_topics("gw-a"), room.channel())
        .hset(room.members_key(), "gw-a", 5)
        .query_async(&mut conn)
        .await?;

    let gateway = InProcessGateway::start(config(&redis, "gw-a")).await?;
    let addr = gateway.addr();
    eventually("the gateway is ready", || async move {
        matches!(http_get(addr, "/readyz").await, Ok((200, _)))
    })
    .await;
    let left: bool = conn.exists(room.members_key()).await?;
    assert!(!left, "the stale count is gone once the gateway is ready");
    gateway.stop().await?;
    Ok(())
}

#[tokio::test]
async fn readiness_follows_redis() -> anyhow::Result<()> {
    let mut redis = RedisServer::spawn().await?;
    let gateway = InProcessGateway::start(config(&redis, "gw-r")).await?;
    let addr = gateway.addr();
    eventually("ready with Redis up", || async move {
        matches!(http_get(addr, "/readyz").await, Ok((200, _)))
    })
    .await;
    let (status, _) = http_get(addr, "/healthz").await?;
    assert_eq!(status, 200);

    redis.stop().await?;
    let body = eventually("not ready with Redis down", || async move {
        match http_get(addr, "/readyz").await {
            Ok((503, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(body.contains("not ready"), "{body}");
    let (status, _) = http_get(addr, "/healthz").await?;
    assert_eq!(status, 200, "alive even when not ready");

    redis.start().await?;
    eventually("ready again after Redis is back", || async move {
        matches!(http_get(addr, "/readyz").await, Ok((200, _)))
    })
    .await;
    gateway.stop().await?;
    Ok(())
}
