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

/// Whether every one of the `partitions` partition cursors is at or past entry `id`: every
/// effect of the entries up to `id` is in Redis and committed.
async fn done_up_to(
    conn: &mut MultiplexedConnection,
    keys: &KeySpace,
    partitions: u16,
    id: &str,
) -> bool {
    let mut pipe = redis::pipe();
    for p in 0..partitions {
        pipe.cmd("GET").arg(keys.partition(p, partitions).cursor());
    }
    let cursors: Vec<Option<String>> = pipe.query_async(conn).await.expect("GET cursors");
    cursors
        .iter()
        .all(|c| c.as_deref().is_some_and(|c| id_of(c) >= id_of(id)))
}

/// Waits until every partition committed entry `id`.
async fn await_done(
    conn: &MultiplexedConnection,
    keys: &KeySpace,
    fanout: &InProcessFanout,
    id: &str,
) {
    let partitions = fanout.partitions();
    eventually("every partition committed the last entry", || {
        let mut conn = conn.clone();
        let (keys, id) = (keys.clone(), id.to_owned());
        async move { done_up_to(&mut conn, &keys, partitions, &id).await }
    })
    .await;
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
    await_done(&conn, &keys, &fanout, &ids[999]).await;
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!((stats.published, stats.receivers), (1000, 1000));
    assert_eq!(stats.committed, 1000);
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
    assert_eq!(
        (stats.batches, stats.published, stats.committed),
        (1, 24, 24)
    );
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
async fn topics_nobody_holds_get_no_publish_and_are_still_committed() {
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

    await_done(&conn, &keys, &fanout, &last).await;
    let meta_exists: bool = redis::cmd("EXISTS")
        .arg(ghost.meta_key())
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!meta_exists, "an unheld topic gets no sequence");
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!((stats.unheld, stats.published, stats.committed), (2, 2, 3));
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

    // Still running, and everything gets committed.
    let after = xadd(&mut conn, &stream, &valid(99)).await;
    let (_, env) = gateway.next_envelope().await;
    assert_eq!(
        (env.body.source_id.as_str(), env.seq),
        (after.as_str(), valid_ids.len() as u64 + 1)
    );
    await_done(&conn, &keys, &fanout, &after).await;
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!(stats.dead_lettered, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapplying_committed_entries_is_idempotent() {
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

    let before = publish_many(&mut conn, &stream, "r", 5).await;
    for id in &before {
        assert_eq!(&gateway.next_envelope().await.1.body.source_id, id);
    }
    await_done(&conn, &keys, &first, &before[4]).await;
    let partitions = first.partitions();
    let _ = first.stop().await.expect("clean shutdown");

    // Lose every commit, as if they never happened: the whole stream is applied again.
    let mut pipe = redis::pipe();
    for p in 0..partitions {
        pipe.cmd("DEL").arg(keys.partition(p, partitions).cursor());
    }
    let () = pipe.query_async(&mut conn).await.expect("DEL cursors");
    let second = start_fanout(&redis, &["--fanout-replica-id", "test-fanout-2"]).await;
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
async fn entries_published_before_any_fanout_ran_are_processed() {
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
    let cursors: Vec<String> = redis::cmd("KEYS")
        .arg("socket.io:fanout:*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(
        cursors.is_empty(),
        "no fanout state before the first fanout"
    );

    let fanout = start_fanout(&redis, &[]).await;
    for (n, id) in ids.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!((&env.body.source_id, env.seq), (id, n as u64 + 1));
    }
    let _ = fanout.stop().await.expect("clean shutdown");
}

/// A replica that crashed in the middle of a batch: part of the batch is in Redis (sequenced and
/// published), its cursors were not moved. The next owner applies the batch again from the
/// cursors: what was applied is skipped, the rest follows, each entry once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applied_but_not_committed_is_applied_again_exactly_once() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "r");
    gateway.hold(&room).await.expect("holds");
    let ids = publish_many(&mut conn, &stream, "r", 5).await;
    // The crashed replica got through the first three entries with the real script.
    let mut call = redis::cmd("EVAL");
    call.arg(roomcast_shared::wire::TOPIC_PUBLISH_LUA)
        .arg(4)
        .arg(room.meta_key())
        .arg(room.members_key())
        .arg(room.history_key())
        .arg(room.hold_key())
        .arg(room.channel())
        .arg(1000)
        .arg(0);
    for (n, id) in ids.iter().take(3).enumerate() {
        let body = roomcast_shared::wire::EnvelopeBody {
            source_id: id.clone(),
            nsp: "/".into(),
            rooms: vec!["r".into()],
            except: vec![],
            data: format!(r#"["message",{{"i":{n}}}]"#),
            published_at_ms: ms_of(id),
            traceparent: None,
        };
        call.arg(id).arg(body.encode().expect("encodes"));
    }
    let reply: Vec<i64> = call.query_async(&mut conn).await.expect("EVAL");
    assert_eq!(
        reply,
        [1, 1, 1, 1, 2, 1, 1, 3, 1],
        "three sequenced, one receiver each"
    );
    for (n, id) in ids.iter().take(3).enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!((&env.body.source_id, env.seq), (id, n as u64 + 1));
    }

    let fanout = start_fanout(&redis, &[]).await;
    for (n, id) in ids.iter().enumerate().skip(3) {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!(
            (&env.body.source_id, env.seq),
            (id, n as u64 + 1),
            "the rest, in order; nothing twice"
        );
    }
    await_done(&conn, &keys, &fanout, &ids[4]).await;
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!((stats.duplicates, stats.published), (3, 2));
}

/// A replica that died holding leases (and its registration): the survivor cannot take the
/// partitions while the leases live, then takes them all and continues from their cursors,
/// without applying again what the dead one had committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_partitions_are_taken_over_when_its_leases_expire() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "r");
    gateway.hold(&room).await.expect("holds");
    let partitions: u16 = 4;
    let done = publish_many(&mut conn, &stream, "r", 3).await;
    let now_ms: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let ghost_ttl_ms: u64 = 1500;
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(keys.fanout_replicas())
        .arg(now_ms + ghost_ttl_ms)
        .arg("ghost");
    for p in 0..partitions {
        let pk = keys.partition(p, partitions);
        pipe.cmd("SET")
            .arg(pk.lease())
            .arg("ghost")
            .arg("PX")
            .arg(ghost_ttl_ms);
        // The ghost had committed the first three entries everywhere.
        pipe.cmd("SET").arg(pk.cursor()).arg(&done[2]);
    }
    let () = pipe.query_async(&mut conn).await.expect("ghost state");
    let fanout = start_fanout(
        &redis,
        &[
            "--fanout-partitions",
            "4",
            "--fanout-lease-ttl-ms",
            "1000",
            "--fanout-lease-renew-ms",
            "100",
        ],
    )
    .await;
    let ids = publish_many(&mut conn, &stream, "r", 3).await;
    for (n, id) in ids.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!(
            (&env.body.source_id, env.seq),
            (id, n as u64 + 1),
            "only what the ghost had not committed, in order"
        );
    }
    let owner: String = redis::cmd("GET")
        .arg(keys.partition(0, partitions).lease())
        .query_async(&mut conn)
        .await
        .expect("GET lease");
    assert_eq!(owner, fanout.replica());
    await_done(&conn, &keys, &fanout, &ids[2]).await;
    let stats = fanout.stop().await.expect("clean shutdown");
    assert!(stats.leases_acquired >= 4, "{stats:?}");
    assert_eq!((stats.published, stats.duplicates), (3, 0));
    let left: u64 = redis::cmd("EXISTS")
        .arg(keys.partition(0, partitions).lease())
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(left, 0, "released on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trims_what_every_partition_and_group_finished_and_nothing_else() {
    let Setup {
        redis,
        mut conn,
        keys,
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
    eventually("the fanout committed everything", || async move {
        f.stats().committed == 1000
    })
    .await;
    await_done(&conn, &keys, f, &ids[999]).await;

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
    await_done(&conn, &keys, &fanout, &nobody_id).await;

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
    let pttl = |key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .expect("PTTL")
        }
    };
    assert_eq!(
        pttl(held.meta_key()).await,
        -1,
        "a held topic's sequence does not expire"
    );
    let recovering_meta = pttl(recovering.meta_key()).await;
    assert!(
        recovering_meta > 0 && recovering_meta <= 60_000,
        "a topic kept only by a hold: its sequence expires like the hold, got {recovering_meta}"
    );
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

/// The trim never removes what a partition has not done: a partition held by a (dead, slow)
/// replica whose cursor stays behind holds the trim back, up to its cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trims_only_what_the_slowest_partition_has_done() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        gateway: _,
    } = setup().await;
    let partitions: u16 = 2;
    // A replica that owns partition 1 for the whole test and has done nothing there.
    let now_ms = unix_ms();
    let slow = keys.partition(1, partitions);
    let () = redis::pipe()
        .cmd("ZADD")
        .arg(keys.fanout_replicas())
        .arg(now_ms + 600_000)
        .arg("slow")
        .cmd("SET")
        .arg(slow.lease())
        .arg("slow")
        .arg("PX")
        .arg(600_000)
        .cmd("SET")
        .arg(slow.cursor())
        .arg("0-0")
        .query_async(&mut conn)
        .await
        .expect("slow replica");
    let fanout = start_fanout(
        &redis,
        &[
            "--fanout-partitions",
            "2",
            "--fanout-trim-interval-ms",
            "50",
            "--fanout-lease-renew-ms",
            "100",
        ],
    )
    .await;
    let f = &fanout;
    let ids = publish_many(&mut conn, &stream, "nobody", 1000).await;
    let mine = keys.partition(0, partitions);
    eventually("partition 0 committed everything", || {
        let mut conn = conn.clone();
        let (key, last) = (mine.cursor(), ids[999].clone());
        async move {
            let cursor: Option<String> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            cursor.is_some_and(|c| c == last)
        }
    })
    .await;
    let runs = f.stats().trim_runs;
    eventually("three more trim passes", || async move {
        f.stats().trim_runs >= runs + 3
    })
    .await;
    assert_eq!(
        xlen(&mut conn, &stream).await,
        1000,
        "partition 1 has done nothing: nothing is trimmed"
    );
    assert_eq!(f.stats().backlog, 1000, "the backlog is what is left to do");
    assert_eq!(
        f.stats().partitions_owned,
        1,
        "its fair share of 2 partitions"
    );

    // The slow replica gets through the first half.
    let () = redis::cmd("SET")
        .arg(slow.cursor())
        .arg(&ids[499])
        .query_async(&mut conn)
        .await
        .expect("SET cursor");
    eventually("the done half is trimmed", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { xlen(&mut conn, &stream).await < 1000 }
    })
    .await;
    let runs = f.stats().trim_runs;
    eventually("three more trim passes", || async move {
        f.stats().trim_runs >= runs + 3
    })
    .await;
    assert_eq!(
        xrange(&mut conn, &stream, &ids[500], &ids[500]).await.len(),
        1,
        "the first entry partition 1 has not done is kept"
    );
    assert!(xlen(&mut conn, &stream).await >= 500);
    let _ = fanout.stop().await.expect("clean shutdown");
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Envelopes by channel, as a gateway holding every topic receives them.
async fn collect_envelopes(
    gateway: &mut FakeGateway,
    n: usize,
) -> std::collections::HashMap<String, Vec<roomcast_shared::wire::Envelope>> {
    let mut by_channel: std::collections::HashMap<String, Vec<_>> = Default::default();
    for _ in 0..n {
        let (channel, env) = gateway.next_envelope().await;
        by_channel.entry(channel).or_default().push(env);
    }
    by_channel
}

/// Publishes `per_room` events to each room, round-robin, in pipelines of 100; returns each
/// room's entry ids in publish order.
async fn publish_round_robin(
    conn: &mut MultiplexedConnection,
    stream: &str,
    rooms: &[String],
    per_room: usize,
) -> std::collections::HashMap<String, Vec<String>> {
    let mut ids: std::collections::HashMap<String, Vec<String>> = Default::default();
    let requests: Vec<(usize, &String)> = (0..per_room)
        .flat_map(|i| rooms.iter().map(move |r| (i, r)))
        .collect();
    for chunk in requests.chunks(100) {
        let mut pipe = redis::pipe();
        for (i, room) in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("room")
                .arg(room.as_str())
                .arg("event")
                .arg("m")
                .arg("data")
                .arg(format!(r#"{{"i":{i}}}"#));
        }
        let got: Vec<String> = pipe.query_async(conn).await.expect("XADD pipeline");
        for ((_, room), id) in chunk.iter().zip(got) {
            ids.entry((*room).clone()).or_default().push(id);
        }
    }
    ids
}

/// Every room's envelopes are exactly its published entries: seq 1.., in publish order, once.
fn assert_rooms_complete(
    keys: &KeySpace,
    got: &std::collections::HashMap<String, Vec<roomcast_shared::wire::Envelope>>,
    published: &std::collections::HashMap<String, Vec<String>>,
) {
    for (room, ids) in published {
        let channel = keys.room("/", room).into_channel();
        let envs = got.get(&channel).map(Vec::as_slice).unwrap_or_default();
        let sources: Vec<&str> = envs.iter().map(|e| e.body.source_id.as_str()).collect();
        let expected: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(
            sources, expected,
            "room {room}: every entry once, in publish order"
        );
        let seqs: Vec<u64> = envs.iter().map(|e| e.seq).collect();
        let contiguous: Vec<u64> = (1..=ids.len() as u64).collect();
        assert_eq!(seqs, contiguous, "room {room}: contiguous seq");
    }
}

const FAST_LEASES: [&str; 4] = [
    "--fanout-lease-ttl-ms",
    "1500",
    "--fanout-lease-renew-ms",
    "100",
];

async fn start_replica(redis: &RedisServer, id: &str, extra: &[&str]) -> InProcessFanout {
    let mut args = vec!["--fanout-replica-id", id];
    args.extend_from_slice(&FAST_LEASES);
    args.extend_from_slice(extra);
    start_fanout(redis, &args).await
}

/// Two replicas split the partitions (8 each); 20 rooms × 100 events, plus refused entries, all
/// published at once: every room gets every entry once, in publish order, with contiguous seq;
/// both replicas did part of the work; each refused entry is dead-lettered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_partitions_and_keep_every_room_in_order() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let rooms: Vec<String> = (0..20).map(|i| format!("room-{i}")).collect();
    for room in &rooms {
        gateway.hold(&keys.room("/", room)).await.expect("holds");
    }
    let a = start_replica(&redis, "replica-a", &[]).await;
    let b = start_replica(&redis, "replica-b", &[]).await;
    let (ra, rb) = (&a, &b);
    eventually("each replica owns half of the partitions", || async move {
        ra.stats().partitions_owned == 8 && rb.stats().partitions_owned == 8
    })
    .await;

    let published = publish_round_robin(&mut conn, &stream, &rooms, 100).await;
    let mut refused = Vec::new();
    for n in 0..5 {
        refused.push(xadd(&mut conn, &stream, &fields(&[("romm", &format!("{n}"))])).await);
    }
    let got = collect_envelopes(&mut gateway, 2000).await;
    assert_rooms_complete(&keys, &got, &published);

    let dead_stream = keys.dead_letter_stream();
    eventually("the refused entries are dead-lettered", || {
        let mut conn = conn.clone();
        let dead_stream = dead_stream.clone();
        async move { xlen(&mut conn, &dead_stream).await == 5 }
    })
    .await;
    let last = refused.last().cloned().expect("refused entries");
    await_done(&conn, &keys, &a, &last).await;
    let dead: Vec<String> = xrange(&mut conn, &dead_stream, "-", "+")
        .await
        .into_iter()
        .map(|(_, f)| String::from_utf8_lossy(&f[f.len() - 1].1).into_owned())
        .collect();
    assert_eq!(dead, refused, "each refused entry once, in order");

    let (status, body) = http_get(a.admin_addr(), "/stats")
        .await
        .expect("GET /stats");
    assert_eq!(status, 200);
    assert!(body.contains("\"partitions_owned\":8"), "{body}");

    let sa = a.stop().await.expect("clean shutdown");
    let sb = b.stop().await.expect("clean shutdown");
    assert_eq!(sa.published + sb.published, 2000, "{sa:?} {sb:?}");
    assert!(
        sa.published > 0 && sb.published > 0,
        "both did part of the work"
    );
    assert_eq!(sa.duplicates + sb.duplicates, 0);
    assert_eq!(sa.dead_lettered + sb.dead_lettered, 5);
    assert!(
        sa.entries >= 2005 && sb.entries >= 2005,
        "every replica reads every entry"
    );
}

/// A replica stopped with SIGTERM (here: its shutdown token) gives its leases up: the other one
/// takes them at once, without waiting for them to expire, and carries on in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_hands_its_partitions_over() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let rooms: Vec<String> = (0..8).map(|i| format!("room-{i}")).collect();
    for room in &rooms {
        gateway.hold(&keys.room("/", room)).await.expect("holds");
    }
    // Leases that would take a minute to expire: only a release lets b take a's partitions.
    let slow_expiry = [
        "--fanout-lease-ttl-ms",
        "60000",
        "--fanout-lease-renew-ms",
        "100",
    ];
    let a = start_fanout(
        &redis,
        &[&["--fanout-replica-id", "replica-a"][..], &slow_expiry].concat(),
    )
    .await;
    let ra = &a;
    eventually("a owns everything", || async move {
        ra.stats().partitions_owned == 16
    })
    .await;
    let b = start_fanout(
        &redis,
        &[&["--fanout-replica-id", "replica-b"][..], &slow_expiry].concat(),
    )
    .await;
    let rb = &b;
    eventually("a gives half to b", || async move {
        ra.stats().partitions_owned == 8 && rb.stats().partitions_owned == 8
    })
    .await;
    let first = publish_round_robin(&mut conn, &stream, &rooms, 20).await;
    let got = collect_envelopes(&mut gateway, 160).await;
    assert_rooms_complete(&keys, &got, &first);

    let sa = a.stop().await.expect("clean shutdown");
    assert_eq!(
        sa.leases_released, 16,
        "8 handed to b when it came, 8 at shutdown"
    );
    eventually("b takes a's partitions", || async move {
        rb.stats().partitions_owned == 16
    })
    .await;
    let second = publish_round_robin(&mut conn, &stream, &rooms, 20).await;
    let got = collect_envelopes(&mut gateway, 160).await;
    for (room, ids) in &second {
        let channel = keys.room("/", room).into_channel();
        let sources: Vec<&str> = got[&channel]
            .iter()
            .map(|e| e.body.source_id.as_str())
            .collect();
        assert_eq!(sources, ids.iter().map(String::as_str).collect::<Vec<_>>());
        let seqs: Vec<u64> = got[&channel].iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (21..=40).collect::<Vec<u64>>(),
            "room {room} continues"
        );
    }
    let _ = b.stop().await.expect("clean shutdown");
}

/// Two processes that both believe they own every partition (here: the same replica id, as a
/// replica cut off from Redis long enough to lose its leases but still running would): they
/// apply the same entries concurrently. The per-topic check on the source id still lets each
/// entry in exactly once, in order — into the channel, the history and the dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_of_the_same_partitions_still_apply_each_entry_once_in_order() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let rooms: Vec<String> = (0..10).map(|i| format!("room-{i}")).collect();
    for room in &rooms {
        gateway.hold(&keys.room("/", room)).await.expect("holds");
    }
    let history = [
        "--recovery-max-disconnection-ms",
        "60000",
        "--fanout-batch-size",
        "50",
    ];
    let a = start_replica(&redis, "twin", &history).await;
    let b = start_replica(&redis, "twin", &history).await;
    let (ra, rb) = (&a, &b);
    eventually("both hold every partition", || async move {
        ra.stats().partitions_owned == 16 && rb.stats().partitions_owned == 16
    })
    .await;

    let mut refused = Vec::new();
    let mut published: std::collections::HashMap<String, Vec<String>> = Default::default();
    for round in 0..10 {
        for (room, ids) in publish_round_robin(&mut conn, &stream, &rooms, 30).await {
            published.entry(room).or_default().extend(ids);
        }
        refused.push(
            xadd(
                &mut conn,
                &stream,
                &fields(&[("romm", &format!("{round}"))]),
            )
            .await,
        );
    }
    let got = collect_envelopes(&mut gateway, 3000).await;
    assert_rooms_complete(&keys, &got, &published);
    let last = refused.last().cloned().expect("refused");
    await_done(&conn, &keys, &a, &last).await;
    for (room, ids) in &published {
        let hist = xrange(&mut conn, &keys.room("/", room).history_key(), "-", "+").await;
        let hist_ids: Vec<&String> = hist.iter().map(|(id, _)| id).collect();
        assert_eq!(
            hist_ids,
            ids.iter().collect::<Vec<_>>(),
            "room {room}: history once each"
        );
    }
    let dead: Vec<String> = xrange(&mut conn, &keys.dead_letter_stream(), "-", "+")
        .await
        .into_iter()
        .map(|(_, f)| String::from_utf8_lossy(&f[f.len() - 1].1).into_owned())
        .collect();
    assert_eq!(dead, refused, "each refused entry dead-lettered once");
    // The slower of the two goes through everything too (as no-ops).
    eventually("both committed every entry", || async move {
        ra.stats().committed >= 3010 && rb.stats().committed >= 3010
    })
    .await;
    let sa = a.stop().await.expect("clean shutdown");
    let sb = b.stop().await.expect("clean shutdown");
    assert_eq!(sa.published + sb.published, 3000, "{sa:?} {sb:?}");
    assert!(
        sa.published + sb.published + sa.duplicates + sb.duplicates >= 6000,
        "both applied every entry; one of them won each time: {sa:?} {sb:?}"
    );
}

/// The cursor moves only once every effect of a batch is in Redis: while Redis refuses the
/// topics' scripts (an ACL that denies the room keys: `NOPERM`, retryable), nothing is
/// committed; once it accepts them, everything arrives in order and is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_committed_before_its_effects_are_in_redis() {
    let Setup {
        redis,
        mut conn,
        keys,
        stream,
        mut gateway,
    } = setup().await;
    let room = keys.room("/", "r");
    gateway.hold(&room).await.expect("holds");
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("fanout")
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .expect("ACL SETUSER");
    let url = format!("redis://fanout:secret@127.0.0.1:{}", redis.port());
    let fanout =
        InProcessFanout::start(InProcessFanout::config(&url, &["--fanout-partitions", "1"]))
            .await
            .expect("fanout starts");
    let f = &fanout;
    eventually("the fanout owns the partition", || async move {
        f.stats().partitions_owned == 1
    })
    .await;
    // Only its own keys and the publish stream from now on: the topic script is refused.
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("fanout")
        .arg("resetkeys")
        .arg("~socket.io:fanout:*")
        .arg("~socket.io:publish*")
        .query_async(&mut conn)
        .await
        .expect("ACL SETUSER");
    let ids = publish_many(&mut conn, &stream, "r", 3).await;
    eventually("the refused script calls are retried", || async move {
        f.stats().retries >= 3
    })
    .await;
    assert!(
        !done_up_to(&mut conn, &keys, 1, &ids[0]).await,
        "not committed while refused"
    );
    let meta: bool = redis::cmd("EXISTS")
        .arg(room.meta_key())
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!meta, "and nothing applied");

    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("fanout")
        .arg("~*")
        .query_async(&mut conn)
        .await
        .expect("ACL SETUSER");
    for (n, id) in ids.iter().enumerate() {
        let (_, env) = gateway.next_envelope().await;
        assert_eq!((&env.body.source_id, env.seq), (id, n as u64 + 1));
    }
    await_done(&conn, &keys, &fanout, &ids[2]).await;
    let stats = fanout.stop().await.expect("clean shutdown");
    assert_eq!((stats.published, stats.committed, stats.dropped), (3, 3, 0));
}
