//! The fanout in-process against a real `redis-server`, with the test acting as a backend (XADD to
//! the publish stream) and as a gateway (holding topics and subscribing to their channels).

use redis::{Value, aio::MultiplexedConnection};
use roomcast_shared::wire::KeySpace;
use roomcast_tests::{FakeGateway, InProcessFanout, RedisServer, eventually, http_get};

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

async fn xadd(conn: &mut MultiplexedConnection, stream: &str, fields: &Fields) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (name, value) in fields {
        cmd.arg(name).arg(value);
    }
    cmd.query_async(conn).await.expect("XADD")
}

/// `XADD`s `n` `message` events `{"i": 0..n}` to `room` in one pipeline; returns their ids.
async fn publish_many(
    conn: &mut MultiplexedConnection,
    stream: &str,
    room: &str,
    n: usize,
) -> Vec<String> {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("room")
            .arg(room)
            .arg("event")
            .arg("message")
            .arg("data")
            .arg(format!(r#"{{"i":{i}}}"#));
    }
    pipe.query_async(conn).await.expect("XADD pipeline")
}

async fn pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let summary: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .expect("XPENDING");
    match summary {
        Value::Array(parts) => match parts.first() {
            Some(Value::Int(n)) => *n,
            other => panic!("unexpected XPENDING count {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

async fn xlen(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("XLEN")
}

/// Entries of a stream with their fields raw and in order.
async fn xrange(
    conn: &mut MultiplexedConnection,
    key: &str,
    start: &str,
    end: &str,
) -> Vec<(String, Fields)> {
    let raw: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg(start)
        .arg(end)
        .query_async(conn)
        .await
        .expect("XRANGE");
    raw.into_iter()
        .map(|(id, flat)| {
            (
                id,
                flat.chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect(),
            )
        })
        .collect()
}

fn ms_of(id: &str) -> u64 {
    id_of(id).0
}

/// `(ms, seq)` of a stream id, which orders like the id.
fn id_of(id: &str) -> (u64, u64) {
    id.split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .expect("stream id")
}

struct Setup {
    redis: RedisServer,
    conn: MultiplexedConnection,
    keys: KeySpace,
    stream: String,
    gateway: FakeGateway,
}

async fn setup() -> Setup {
    let redis = RedisServer::spawn().await.expect("redis-server starts");
    let conn = redis.connection().await.expect("connects");
    let gateway = FakeGateway::connect(&redis, "test-gw")
        .await
        .expect("gateway connects");
    let keys = KeySpace::new("socket.io");
    let stream = keys.publish_stream();
    Setup {
        redis,
        conn,
        keys,
        stream,
        gateway,
    }
}

async fn start_fanout(redis: &RedisServer, extra: &[&str]) -> InProcessFanout {
    let fanout = InProcessFanout::start(InProcessFanout::config(&redis.url(), extra))
        .await
        .expect("fanout starts");
    assert_eq!(
        fanout.keys().prefix(),
        "socket.io",
        "tests assume the default key prefix"
    );
    fanout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_entries_arrive_in_order_with_contiguous_seq() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "chat");
    gateway.hold(&room).await.expect("holds");
    let fanout = start_fanout(&redis, &[]).await;

    let ids = publish_many(&mut conn, &stream, "chat", 1000).await;
    for (i, id) in ids.iter().enumerate() {
        let (channel, env) = gateway.next_envelope().await;
        assert_eq!(channel, room.channel());
        assert_eq!(env.seq, i as u64 + 1, "contiguous seq");
        assert_eq!(&env.body.source_id, id, "publish order");
        assert_eq!(env.body.data, format!(r#"["message",{{"i":{i}}}]"#));
        assert_eq!(env.body.nsp, "/");
        assert_eq!(env.body.rooms, ["chat"]);
        assert!(env.body.except.is_empty());
        assert_eq!(env.body.published_at_ms, ms_of(id));
    }
    let group = fanout.group().to_owned();
    eventually("all entries acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!((stats.published, stats.receivers), (1000, 1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_one_pipeline_chunk_stays_in_order() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "big");
    gateway.hold(&room).await.expect("holds");
    // 24 entries of ~600 KB, read in one batch: more than the 8 MiB a pipeline chunk carries.
    let payload = format!(r#""{}""#, "x".repeat(600_000));
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(
            xadd(
                &mut conn,
                &stream,
                &fields(&[("room", "big"), ("event", "blob"), ("data", &payload)]),
            )
            .await,
        );
    }
    let fanout = start_fanout(&redis, &[]).await;
    for (n, id) in ids.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!((&env.body.source_id, env.seq), (id, n as u64 + 1));
        assert_eq!(env.body.data.len(), payload.len() + r#"["blob",]"#.len());
    }
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!((stats.batches, stats.published, stats.acked), (1, 24, 24));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_room_namespace_and_except() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let (a, b, root, admin) = (
        keys.room("/", "a"),
        keys.room("/", "b"),
        keys.namespace("/"),
        keys.namespace("/admin"),
    );
    for topic in [&a, &b, &root, &admin] {
        gateway.hold(topic).await.expect("holds");
    }
    let fanout = start_fanout(&redis, &[]).await;

    let id = xadd(
        &mut conn,
        &stream,
        &fields(&[
            ("rooms", r#"["a","b"]"#),
            ("event", "m"),
            ("data", r#"{"x":1}"#),
            ("except", r#"["c"]"#),
        ]),
    )
    .await;
    let (first_channel, first) = gateway.next_envelope().await;
    let (second_channel, second) = gateway.next_envelope().await;
    // One publish per room, in request order, with the same body.
    assert_eq!(
        (first_channel.as_str(), second_channel.as_str()),
        (a.channel(), b.channel())
    );
    assert_eq!(first.body, second.body);
    assert_eq!((first.seq, second.seq), (1, 1));
    assert_eq!(first.body.source_id, id);
    assert_eq!(first.body.rooms, ["a", "b"]);
    assert_eq!(first.body.except, ["c"]);
    assert_eq!(first.body.data, r#"["m",{"x":1}]"#);

    // No room: the whole namespace.
    xadd(&mut conn, &stream, &fields(&[("event", "tick")])).await;
    let (channel, env) = gateway.next_envelope().await;
    assert_eq!(channel, root.channel());
    assert!(env.body.rooms.is_empty());
    assert_eq!(env.body.data, r#"["tick"]"#);
    assert_eq!(env.seq, 1);

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    xadd(
        &mut conn,
        &stream,
        &fields(&[
            ("nsp", "/admin"),
            ("event", "e"),
            ("args", r#"[1,"two"]"#),
            ("except", r#"["x","y"]"#),
            ("traceparent", traceparent),
        ]),
    )
    .await;
    let (channel, env) = gateway.next_envelope().await;
    assert_eq!(channel, admin.channel());
    assert_eq!(env.body.nsp, "/admin");
    assert_eq!(env.body.data, r#"["e",1,"two"]"#);
    assert_eq!(env.body.except, ["x", "y"]);
    assert_eq!(env.body.traceparent.as_deref(), Some(traceparent));
    let _ = fanout.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_nobody_holds_get_no_publish_and_are_still_acked() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let (held, ghost) = (keys.room("/", "held"), keys.room("/", "ghost"));
    gateway.hold(&held).await.expect("holds");
    // Subscribed on the same connection: a publish on `ghost` would arrive before later ones.
    gateway.subscribe(&ghost).await.expect("subscribes");
    let fanout = start_fanout(&redis, &[]).await;

    xadd(
        &mut conn,
        &stream,
        &fields(&[("room", "ghost"), ("event", "m")]),
    )
    .await;
    let both = xadd(
        &mut conn,
        &stream,
        &fields(&[("rooms", r#"["ghost","held"]"#), ("event", "m")]),
    )
    .await;
    let last = xadd(
        &mut conn,
        &stream,
        &fields(&[("room", "held"), ("event", "m")]),
    )
    .await;

    let (channel, env) = gateway.next_envelope().await;
    assert_eq!(
        (channel.as_str(), env.seq, env.body.source_id.as_str()),
        (held.channel(), 1, both.as_str())
    );
    let (channel, env) = gateway.next_envelope().await;
    assert_eq!(
        (channel.as_str(), env.seq, env.body.source_id.as_str()),
        (held.channel(), 2, last.as_str())
    );

    let group = fanout.group().to_owned();
    eventually("the ghost entries are acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;
    let meta_exists: bool = redis::cmd("EXISTS")
        .arg(ghost.meta_key())
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!meta_exists, "an unheld topic gets no sequence");
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!((stats.unheld, stats.published, stats.acked), (2, 2, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered_and_valid_ones_delivered() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "r");
    gateway.hold(&room).await.expect("holds");
    let fanout = start_fanout(&redis, &["--max-publish-bytes", "2048"]).await;

    let oversized = format!(r#""{}""#, "x".repeat(3000));
    let mut not_utf8 = fields(&[("event", "e")]);
    not_utf8.push((b"room".to_vec(), vec![0xff, 0xfe]));
    let bad: Vec<(Fields, &str)> = vec![
        (
            fields(&[("room", "r"), ("data", "1")]),
            "missing required field `event`",
        ),
        (
            fields(&[("room", "r"), ("event", "e"), ("data", "{nope")]),
            "field `data` is not valid JSON",
        ),
        (
            fields(&[("room", "r"), ("event", "e"), ("args", r#"{"a":1}"#)]),
            "field `args` must be a JSON array",
        ),
        (
            fields(&[("rooms", r#""r""#), ("event", "e")]),
            "field `rooms` must be a JSON array of room names",
        ),
        (
            fields(&[("romm", "r"), ("event", "e")]),
            "unknown field `romm`",
        ),
        (
            fields(&[("room", "r"), ("event", "e"), ("data", &oversized)]),
            "over the limit of 2048 bytes",
        ),
        (
            fields(&[("room", "r"), ("event", "e"), ("nsp", "admin")]),
            "namespace must start with '/'",
        ),
        (
            fields(&[("room", "r"), ("event", "disconnect")]),
            "reserved by Socket.IO",
        ),
        (
            fields(&[("room", "r"), ("event", "e"), ("event", "f")]),
            "field `event` appears more than once",
        ),
        (not_utf8, "not valid UTF-8"),
    ];

    let valid = |n: usize| fields(&[("room", "r"), ("event", "ok"), ("data", &n.to_string())]);
    let mut valid_ids = Vec::new();
    let mut bad_ids = Vec::new();
    for (n, (entry, _)) in bad.iter().enumerate() {
        valid_ids.push(xadd(&mut conn, &stream, &valid(n)).await);
        bad_ids.push(xadd(&mut conn, &stream, entry).await);
    }
    valid_ids.push(xadd(&mut conn, &stream, &valid(bad.len())).await);

    for (n, id) in valid_ids.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!(env.seq, n as u64 + 1);
        assert_eq!(&env.body.source_id, id);
        assert_eq!(env.body.data, format!(r#"["ok",{n}]"#));
    }

    let dead_stream = keys.dead_letter_stream();
    eventually("every bad entry is dead-lettered", || {
        let mut conn = conn.clone();
        let dead_stream = dead_stream.clone();
        async move { xlen(&mut conn, &dead_stream).await == 10 }
    })
    .await;
    let dead = xrange(&mut conn, &dead_stream, "-", "+").await;
    for ((_, dead_fields), ((original, error), source_id)) in
        dead.iter().zip(bad.iter().zip(&bad_ids))
    {
        let n = original.len();
        assert_eq!(
            &dead_fields[..n],
            original.as_slice(),
            "original fields, in order"
        );
        let extra: Vec<(String, String)> = dead_fields[n..]
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        assert_eq!(extra.len(), 2, "{extra:?}");
        assert_eq!(extra[0].0, "error");
        assert!(
            extra[0].1.contains(error),
            "{:?} should mention {error:?}",
            extra[0].1
        );
        assert_eq!(extra[1], ("source_id".to_owned(), source_id.clone()));
    }

    // Still running, nothing left pending.
    let after = xadd(&mut conn, &stream, &valid(99)).await;
    let (_, env) = gateway.next_envelope().await;
    assert_eq!(
        (env.body.source_id.as_str(), env.seq),
        (after.as_str(), valid_ids.len() as u64 + 1)
    );
    let group = fanout.group().to_owned();
    eventually("nothing pending", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!(stats.dead_lettered, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_is_idempotent() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "r");
    gateway.hold(&room).await.expect("holds");
    let first = start_fanout(&redis, &[]).await;
    let group = first.group().to_owned();

    let before = publish_many(&mut conn, &stream, "r", 5).await;
    for id in &before {
        assert_eq!(&gateway.next_envelope().await.1.body.source_id, id);
    }
    eventually("the first fanout acknowledged everything", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;
    let _ = first.stop().await.expect("clean shutdown");

    // Deliver the whole stream again, as after a lost acknowledgement.
    let () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("SETID");
    let second = start_fanout(&redis, &["--fanout-consumer", "test-fanout-2"]).await;
    let after = publish_many(&mut conn, &stream, "r", 2).await;

    // Had the old entries been published again, they would arrive first (stream order).
    for (n, id) in after.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!(&env.body.source_id, id);
        assert_eq!(env.seq, 6 + n as u64);
    }
    let stats = second.stop().await.expect("clean shutdown");
    assert_eq!((stats.duplicates, stats.published), (5, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_published_before_the_group_exists_are_processed() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "early");
    gateway.hold(&room).await.expect("holds");
    let ids = publish_many(&mut conn, &stream, "early", 3).await;
    let groups: Vec<Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .expect("XINFO");
    assert!(groups.is_empty(), "no group before the first fanout");

    let fanout = start_fanout(&redis, &[]).await;
    for (n, id) in ids.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!((&env.body.source_id, env.seq), (id, n as u64 + 1));
    }
    let _ = fanout.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_entries_of_a_dead_consumer_go_first() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "r");
    gateway.hold(&room).await.expect("holds");
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("roomcast-fanout")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    let mut ids = publish_many(&mut conn, &stream, "r", 3).await;
    // A consumer that read these and died before acknowledging them.
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("roomcast-fanout")
        .arg("dead-pod")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
    ids.extend(publish_many(&mut conn, &stream, "r", 2).await);

    let fanout = start_fanout(&redis, &[]).await;
    for (n, id) in ids.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!(
            (&env.body.source_id, env.seq),
            (id, n as u64 + 1),
            "stream order"
        );
    }
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!(stats.claimed, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_left_by_a_consumer_that_dies_later_are_claimed() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "r");
    gateway.hold(&room).await.expect("holds");
    let fanout = start_fanout(
        &redis,
        &["--claim-min-idle-ms", "200", "--fanout-block-ms", "100"],
    )
    .await;
    let first = publish_many(&mut conn, &stream, "r", 1).await;
    assert_eq!(gateway.next_envelope().await.1.body.source_id, first[0]);

    // Another replica reads an entry and dies; in one transaction, so the fanout's blocked read
    // cannot get the entry first.
    let replies: Vec<Value> = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("room")
        .arg("r")
        .arg("event")
        .arg("late")
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg(fanout.group())
        .arg("dying-pod")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("MULTI/EXEC");
    let id: String = redis::from_redis_value(replies[0].clone()).expect("XADD id");

    let (_, env) = gateway.next_envelope().await;
    assert_eq!((env.body.source_id.as_str(), env.seq), (id.as_str(), 2));
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!(stats.claimed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trims_what_every_group_acknowledged_and_nothing_else() {
    let Setup {
        redis,
        mut conn,
        keys: _,
        stream,
        gateway: _,
    } = setup().await;
    // A second group that reads (and acknowledges) at its own pace.
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("audit")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    let fanout = start_fanout(&redis, &["--fanout-trim-interval-ms", "50"]).await;
    let f = &fanout;
    let ids = publish_many(&mut conn, &stream, "nobody", 1000).await;
    eventually("the fanout acknowledged everything", || async move {
        f.stats().acked == 1000
    })
    .await;

    // `audit` has read nothing: a few trim passes later, nothing is gone.
    let runs = fanout.stats().trim_runs;
    eventually("three more trim passes", || async move {
        f.stats().trim_runs >= runs + 3
    })
    .await;
    assert_eq!(xlen(&mut conn, &stream).await, 1000);

    // `audit` reads everything and acknowledges the first half.
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit")
        .arg("auditor")
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
    let _: u64 = redis::cmd("XACK")
        .arg(&stream)
        .arg("audit")
        .arg(&ids[..500])
        .query_async(&mut conn)
        .await
        .expect("XACK");
    eventually("the acknowledged half is trimmed", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { xlen(&mut conn, &stream).await < 1000 }
    })
    .await;
    let runs = fanout.stats().trim_runs;
    eventually("three more trim passes", || async move {
        f.stats().trim_runs >= runs + 3
    })
    .await;
    let first_kept = xrange(&mut conn, &stream, "-", "+")
        .await
        .first()
        .map(|(id, _)| id.clone())
        .expect("entries left");
    assert!(
        id_of(&first_kept) <= id_of(&ids[500]),
        "nothing unacknowledged is trimmed"
    );
    assert_eq!(
        xrange(&mut conn, &stream, &ids[500], &ids[500]).await.len(),
        1,
        "oldest pending entry kept"
    );
    assert!(xlen(&mut conn, &stream).await >= 500);

    let _: u64 = redis::cmd("XACK")
        .arg(&stream)
        .arg("audit")
        .arg(&ids[500..])
        .query_async(&mut conn)
        .await
        .expect("XACK");
    eventually("everything acknowledged is trimmed", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { xlen(&mut conn, &stream).await < 500 }
    })
    .await;
    let stats = fanout.stop().await.expect("clean shutdown");
    assert!(stats.trimmed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_script_cache_is_reloaded() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "r");
    gateway.hold(&room).await.expect("holds");
    let fanout = start_fanout(&redis, &[]).await;
    publish_many(&mut conn, &stream, "r", 1).await;
    assert_eq!(gateway.next_envelope().await.1.seq, 1);

    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("SCRIPT FLUSH");
    let ids = publish_many(&mut conn, &stream, "r", 3).await;
    for (n, id) in ids.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!((&env.body.source_id, env.seq), (id, n as u64 + 2));
    }
    let stats = fanout.stop().await.expect("clean shutdown");
    assert!(stats.retries >= 1, "went through NOSCRIPT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_and_delivery_resumes_after_a_restart() {
    let Setup {
        mut redis,
        conn,
        keys,
        stream,
        gateway,
    } = setup().await;
    drop((conn, gateway));
    let fanout = start_fanout(&redis, &[]).await;
    let admin = fanout.admin_addr();
    let status = |path: &'static str| async move {
        http_get(admin, path)
            .await
            .map(|(status, _)| status)
            .unwrap_or(0)
    };

    eventually("ready while Redis is up", || async move {
        status("/readyz").await == 200
    })
    .await;
    assert_eq!(status("/healthz").await, 200);

    redis.stop().await.expect("redis-server stops");
    let body = eventually("not ready while Redis is down", || async move {
        match http_get(admin, "/readyz").await {
            Ok((503, body)) => Ok(body),
            other => Err(other),
        }
    })
    .await;
    assert!(body.contains("redis"), "{body}");
    assert_eq!(status("/healthz").await, 200, "alive all along");

    redis
        .start()
        .await
        .expect("redis-server restarts on the same port");
    eventually(
        "ready again",
        || async move { status("/readyz").await == 200 },
    )
    .await;

    // The restarted Redis is empty: gateways hold their topics again, sequencing restarts.
    let mut conn = redis.connection().await.expect("connects");
    let mut gateway = FakeGateway::connect(&redis, "test-gw")
        .await
        .expect("gateway connects");
    let room = keys.room("/", "r");
    gateway.hold(&room).await.expect("holds");
    let ids = publish_many(&mut conn, &stream, "r", 2).await;
    for (n, id) in ids.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!((&env.body.source_id, env.seq), (id, n as u64 + 1));
    }
    let stats = fanout.stop().await.expect("clean shutdown");
    assert!(stats.redis_errors >= 1);
}

/// History for recovery: every sequenced envelope is also in `<topic>:hist` under its source
/// entry id, byte for byte what was published, with the retention window as expiry; a topic
/// nobody holds is recorded only while a `hold` key says a disconnected socket may come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_what_was_published_and_held_topics() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let held = keys.room("/", "held");
    let recovering = keys.room("/", "recovering");
    let nobody = keys.room("/", "nobody");
    gateway.hold(&held).await.expect("holds");
    let _: () = redis::cmd("SET")
        .arg(recovering.hold_key())
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET hold");
    let fanout = start_fanout(&redis, &["--recovery-max-disconnection-ms", "60000"]).await;

    let ids = publish_many(&mut conn, &stream, "held", 3).await;
    let mut published = Vec::new();
    for _ in 0..3 {
        published.push(gateway.next_envelope().await.1);
    }
    let recovering_id = xadd(
        &mut conn,
        &stream,
        &fields(&[("room", "recovering"), ("event", "e")]),
    )
    .await;
    let nobody_id = xadd(
        &mut conn,
        &stream,
        &fields(&[("room", "nobody"), ("event", "e")]),
    )
    .await;
    let group = fanout.group().to_owned();
    eventually("all entries acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;

    let history = xrange(&mut conn, &held.history_key(), "-", "+").await;
    let history_ids: Vec<&String> = history.iter().map(|(id, _)| id).collect();
    assert_eq!(
        history_ids,
        ids.iter().collect::<Vec<_>>(),
        "entry id = source entry id"
    );
    for ((_, fields), env) in history.iter().zip(&published) {
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].0, b"e");
        let stored = roomcast_shared::wire::Envelope::decode(&fields[0].1).expect("decodes");
        assert_eq!(&stored, env, "history holds exactly what was published");
    }
    let ttl: i64 = redis::cmd("PTTL")
        .arg(held.history_key())
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        ttl > 0 && ttl <= 60_000,
        "history expires after the window, got {ttl}"
    );

    let kept = xrange(&mut conn, &recovering.history_key(), "-", "+").await;
    assert_eq!(
        kept.len(),
        1,
        "a held-for-recovery topic keeps history without members"
    );
    assert_eq!(kept[0].0, recovering_id);
    assert_eq!(
        xlen(&mut conn, &nobody.history_key()).await,
        0,
        "nobody holds it: nothing kept"
    );
    let nobody_meta: bool = redis::cmd("EXISTS")
        .arg(nobody.meta_key())
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!nobody_meta, "and not sequenced ({nobody_id})");
    fanout.stop().await.expect("clean shutdown");
}
