//! The backend side: publishes events through Redis at a steady rate, each stamped with the time
//! it was sent, its sequence number in its room and the measurement step, the way each target
//! expects — a Roomcast publish request, or the Redis streams adapter's own broadcast entry for
//! the Node cluster (what `publish.js` in the Node reference does).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, tcp::OwnedWriteHalf},
    time::Instant,
};

use crate::{Target, worker::now_us};

/// Publishes over one plain connection, writing commands back to back and counting the replies
/// on a reader task: order is the order written, and nothing waits for a round trip.
pub(crate) struct Publisher {
    target: Target,
    writer: OwnedWriteHalf,
    replies: Arc<Replies>,
    /// Commands written so far.
    written: u64,
    /// Next sequence number of each room.
    seq: Vec<u64>,
    /// Next room (round robin).
    next_room: usize,
    pad: String,
    buf: Vec<u8>,
}

#[derive(Default)]
struct Replies {
    count: AtomicU64,
    errors: AtomicU64,
    /// The connection ended.
    closed: std::sync::atomic::AtomicBool,
}

/// What one burst of publishing did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    /// Events published to each room.
    pub(crate) per_room: Vec<u64>,
    pub(crate) total: u64,
    pub(crate) seconds: f64,
    pub(crate) errors: u64,
}

impl Publisher {
    pub(crate) async fn new(
        target: Target,
        redis_url: &str,
        rooms: u64,
        payload: usize,
    ) -> anyhow::Result<Self> {
        let addr = redis_url
            .strip_prefix("redis://")
            .context("redis:// URL expected")?;
        let stream = TcpStream::connect(addr)
            .await
            .context("publisher's Redis connection")?;
        stream.set_nodelay(true)?;
        let (mut reader, writer) = stream.into_split();
        let replies = Arc::new(Replies::default());
        let counted = replies.clone();
        tokio::spawn(async move {
            let mut buf = vec![0_u8; 64 * 1024];
            let mut scan = ReplyScanner::default();
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let (replies, errors) = scan.feed(&buf[..n]);
                        counted.count.fetch_add(replies, Ordering::Relaxed);
                        counted.errors.fetch_add(errors, Ordering::Relaxed);
                    }
                }
            }
            counted.closed.store(true, Ordering::Relaxed);
        });
        Ok(Self {
            target,
            writer,
            replies,
            written: 0,
            seq: vec![0; rooms as usize],
            next_room: 0,
            pad: "x".repeat(payload),
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Publishes `rate` events per second for `duration`, round robin over the rooms, stamped
    /// with `step`; returns once Redis has answered every one.
    pub(crate) async fn run(
        &mut self,
        rate: f64,
        duration: Duration,
        step: u64,
    ) -> anyhow::Result<Published> {
        let rooms = self.seq.len();
        let mut out = Published {
            per_room: vec![0; rooms],
            ..Published::default()
        };
        let errors_before = self.replies.errors.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let elapsed = started.elapsed().min(duration);
            let due = (rate * elapsed.as_secs_f64()) as u64;
            let n = due.saturating_sub(out.total);
            if n > 0 {
                self.buf.clear();
                let sent_us = now_us();
                for _ in 0..n {
                    let room = self.next_room;
                    self.next_room = (self.next_room + 1) % rooms;
                    let seq = self.seq[room];
                    self.seq[room] += 1;
                    out.per_room[room] += 1;
                    self.add(room, seq, step, sent_us);
                }
                out.total += n;
                self.written += n;
                self.writer.write_all(&self.buf).await?;
            }
            if elapsed >= duration {
                break;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.replies.count.load(Ordering::Relaxed) < self.written {
            if self.replies.closed.load(Ordering::Relaxed) || Instant::now() > deadline {
                bail!("Redis did not answer every publish");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        out.seconds = started.elapsed().as_secs_f64();
        out.errors = self.replies.errors.load(Ordering::Relaxed) - errors_before;
        Ok(out)
    }

    /// Appends one command in RESP.
    fn command(&mut self, args: &[&[u8]]) {
        use std::io::Write as _;
        let _ = write!(self.buf, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(self.buf, "${}\r\n", a.len());
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
    }

    fn add(&mut self, room: usize, seq: u64, step: u64, sent_us: u64) {
        let payload = format!(
            r#"{{"t":{sent_us},"s":{seq},"k":{step},"p":"{}"}}"#,
            self.pad
        );
        let room = format!("b{room}");
        match self.target {
            Target::Roomcast => {
                self.command(&[
                    b"XADD",
                    b"socket.io:publish",
                    b"*",
                    b"room",
                    room.as_bytes(),
                    b"event",
                    b"bench",
                    b"data",
                    payload.as_bytes(),
                ]);
            }
            Target::Node => {
                // The adapter's BROADCAST (type 3) entry, as a Node server writes it; "emitter" is
                // the uid reserved for external publishers.
                let data = format!(
                    r#"{{"packet":{{"type":2,"data":["bench",{payload}]}},"opts":{{"rooms":["{room}"],"except":[],"flags":{{}}}}}}"#
                );
                self.command(&[
                    b"XADD",
                    b"socket.io",
                    b"MAXLEN",
                    b"~",
                    b"10000",
                    b"*",
                    b"uid",
                    b"emitter",
                    b"nsp",
                    b"/",
                    b"type",
                    b"3",
                    b"data",
                    data.as_bytes(),
                ]);
            }
        }
    }
}

/// Counts complete RESP replies in a byte stream (XADD answers bulk strings; errors are lines
/// starting with `-`), across reads.
#[derive(Debug, Default)]
struct ReplyScanner {
    /// Bytes of a bulk string body (plus CRLF) still to skip.
    skip: usize,
    /// The current header line so far.
    line: Vec<u8>,
}

impl ReplyScanner {
    /// Returns (replies completed, of which errors).
    fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
        let (mut replies, mut errors) = (0, 0);
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    replies += 1;
                }
                continue;
            }
            match data.iter().position(|&b| b == b'\n') {
                None => {
                    self.line.extend_from_slice(data);
                    break;
                }
                Some(end) => {
                    self.line.extend_from_slice(&data[..=end]);
                    data = &data[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    match line.first() {
                        Some(b'$') => {
                            let len: i64 = std::str::from_utf8(&line[1..])
                                .ok()
                                .and_then(|l| l.trim().parse().ok())
                                .unwrap_or(-1);
                            if len < 0 {
                                replies += 1;
                            } else {
                                self.skip = len as usize + 2;
                            }
                        }
                        Some(b'-') => {
                            replies += 1;
                            errors += 1;
                        }
                        _ => replies += 1,
                    }
                }
            }
        }
        (replies, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_replies_split_anywhere() {
        let stream = b"$15\r\n1700000000000-0\r\n-ERR nope\r\n$3\r\n1-0\r\n";
        for cut in 0..stream.len() {
            let mut s = ReplyScanner::default();
            let (a, ea) = s.feed(&stream[..cut]);
            let (b, eb) = s.feed(&stream[cut..]);
            assert_eq!((a + b, ea + eb), (3, 1), "cut at {cut}");
        }
    }
}
