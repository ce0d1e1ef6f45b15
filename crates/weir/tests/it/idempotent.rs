//! Idempotent producers on the native door: the server writes a resent batch once and refuses
//! gaps and old epochs; the client's `Producer` keeps several batches under way per partition
//! and moves a partition to a new epoch after a batch fails for good.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_batch::{BatchBuilder, BatchHeader, RecordSpec};
use weir_client::messages as msg;
use weir_client::producer::Record;
use weir_client::{Client, ClientError, Producer, ProducerConfig, Start};
use weir_wire::ErrorCode;

fn topic(max_batch_bytes: u32) -> msg::TopicConfig {
    msg::TopicConfig {
        partitions: 1,
        max_batch_bytes,
        ..Default::default()
    }
}

/// A batch of `n` records of producer `pid`, `epoch`, from sequence `seq`.
fn stamped(pid: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000).producer(pid, epoch, seq);
    for i in 0..n {
        b.push(RecordSpec::value(format!("r{seq}-{i}").as_bytes()));
    }
    Bytes::from(b.build())
}

fn code(r: Result<weir_client::ProduceAck, ClientError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

/// Every batch stored in partition 0 of `topic`: header and record values.
async fn stored(c: &Client, topic: &str) -> Vec<(BatchHeader, Vec<String>)> {
    let end = c.list_offsets(topic, 0, Start::Latest).await.unwrap();
    let (mut at, mut out) = (0, Vec::new());
    while at < end {
        let f = c
            .fetch(topic, 0, at, 1 << 20, 0, Duration::ZERO)
            .await
            .unwrap();
        let mut rest = f.batches;
        while !rest.is_empty() {
            let h = weir_batch::peek(&rest).unwrap();
            let b = rest.split_to(h.total_len());
            let values = weir_batch::Records::new(&b)
                .unwrap()
                .map(|r| String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap())
                .collect();
            at = (h.base_offset + i64::from(h.last_offset_delta) + 1) as u64;
            out.push((h, values));
        }
    }
    out
}

#[test]
fn a_resent_batch_is_written_once_and_gaps_and_old_epochs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("t", topic(0)).await.unwrap();
        let pid = c.init_producer().await.unwrap();
        assert!(pid >= 0);
        assert_ne!(c.init_producer().await.unwrap(), pid, "ids are not reused");
        let latest = || c.list_offsets("t", 0, Start::Latest);

        let first = stamped(pid, 0, 0, 3);
        let a = c.produce("t", Some(0), None, first.clone()).await.unwrap();
        assert_eq!((a.base_offset, a.last_offset), (0, 2));
        // The answer was lost, say: the same batch again is answered with the same offsets
        // and not written a second time.
        let again = c.produce("t", Some(0), None, first).await.unwrap();
        assert_eq!((again.base_offset, again.last_offset), (0, 2));
        assert_eq!(latest().await.unwrap(), 3);
        let b = c
            .produce("t", Some(0), None, stamped(pid, 0, 3, 2))
            .await
            .unwrap();
        assert_eq!(b.base_offset, 3);

        // A gap (sequence 5 is missing): refused, nothing written.
        let gap = c.produce("t", Some(0), None, stamped(pid, 0, 6, 1)).await;
        assert_eq!(code(gap), Some(ErrorCode::OutOfOrderSequence));
        assert_eq!(latest().await.unwrap(), 5);

        // A new epoch starts from 0; the old one is refused from then on.
        let e1 = c
            .produce("t", Some(0), None, stamped(pid, 1, 0, 1))
            .await
            .unwrap();
        assert_eq!(e1.base_offset, 5);
        let old = c.produce("t", Some(0), None, stamped(pid, 0, 5, 1)).await;
        assert_eq!(code(old), Some(ErrorCode::InvalidProducerEpoch));

        // Sequences are per partition: the partition must be named.
        let routed = c
            .produce("t", None, Some(b"key"), stamped(pid, 1, 1, 1))
            .await;
        assert_eq!(code(routed), Some(ErrorCode::InvalidRequest));

        // Batches without a producer id are written each time they are sent, as before.
        let plain = common::batch(&[b"p"]);
        let p1 = c.produce("t", Some(0), None, plain.clone()).await.unwrap();
        let p2 = c.produce("t", Some(0), None, plain).await.unwrap();
        assert_eq!(p2.base_offset, p1.base_offset + 1);
        assert_eq!(latest().await.unwrap(), 8);
    });
}

#[test]
fn a_topic_deleted_and_made_again_starts_its_producers_sequences_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("d", topic(0)).await.unwrap();
        let pid = c.init_producer().await.unwrap();
        let batch = stamped(pid, 0, 0, 2);
        c.produce("d", Some(0), None, batch.clone()).await.unwrap();
        c.delete_topic("d").await.unwrap();
        c.create_topic("d", topic(0)).await.unwrap();
        // Not taken for a resend of the deleted topic's batch: written.
        let a = c.produce("d", Some(0), None, batch).await.unwrap();
        assert_eq!(a.base_offset, 0);
        assert_eq!(c.list_offsets("d", 0, Start::Latest).await.unwrap(), 2);
    });
}

#[test]
fn a_batch_resent_across_a_server_crash_is_recognised_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (pid, other) = common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("r", topic(0)).await.unwrap();
        let (pid, other) = (
            c.init_producer().await.unwrap(),
            c.init_producer().await.unwrap(),
        );
        for (p, seq, n) in [(pid, 0, 3), (other, 0, 1), (pid, 3, 2)] {
            c.produce("r", Some(0), None, stamped(p, 0, seq, n))
                .await
                .unwrap();
        }
        (pid, other)
    });
    // The server dies before its answers reach the producers, say; a new one starts.
    server.kill9();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        // The resends are answered with the offsets written before the crash, not written again.
        let b = c
            .produce("r", Some(0), None, stamped(pid, 0, 3, 2))
            .await
            .unwrap();
        assert_eq!((b.base_offset, b.last_offset), (4, 5));
        let o = c
            .produce("r", Some(0), None, stamped(other, 0, 0, 1))
            .await
            .unwrap();
        assert_eq!(o.base_offset, 3);
        assert_eq!(c.list_offsets("r", 0, Start::Latest).await.unwrap(), 6);
        // The producers' sequences go on from where the log left them.
        let gap = c.produce("r", Some(0), None, stamped(pid, 0, 6, 1)).await;
        assert_eq!(code(gap), Some(ErrorCode::OutOfOrderSequence));
        let next = c
            .produce("r", Some(0), None, stamped(pid, 0, 5, 1))
            .await
            .unwrap();
        assert_eq!(next.base_offset, 6);
        let o2 = c
            .produce("r", Some(0), None, stamped(other, 0, 1, 1))
            .await
            .unwrap();
        assert_eq!(o2.base_offset, 7);
        assert_eq!(stored(&c, "r").await.len(), 5);
    });
}

/// Produce requests the client had sent when the proxy let the server's answers through again.
///
/// A proxy between a client and `server`: client bytes go straight through, counted by frame;
/// server bytes go straight through until a second Produce request has passed (the first one
/// answered), then wait until `want` Produce requests have (or 10 s have gone by).
async fn proxy(server: String, want: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let produces = Arc::new(AtomicUsize::new(0));
    let seen_at_release = Arc::new(AtomicUsize::new(usize::MAX));
    let (count, released) = (produces.clone(), seen_at_release.clone());
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let upstream = tokio::net::TcpStream::connect(server).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut ur, mut uw) = upstream.into_split();
        let counter = count.clone();
        tokio::spawn(async move {
            let (mut buf, mut pending) = (vec![0u8; 64 << 10], Vec::new());
            loop {
                let n = cr.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                while pending.len() >= 6 {
                    let len = u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
                    if pending.len() < 4 + len {
                        break;
                    }
                    if u16::from_be_bytes([pending[4], pending[5]])
                        == weir_wire::Api::Produce as u16
                    {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    pending.drain(..4 + len);
                }
                if uw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = ur.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            if released.load(Ordering::SeqCst) == usize::MAX && count.load(Ordering::SeqCst) > 1 {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while count.load(Ordering::SeqCst) < want && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                released.store(count.load(Ordering::SeqCst), Ordering::SeqCst);
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    (addr, seen_at_release)
}

#[test]
fn an_idempotent_producer_keeps_several_batches_under_way_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("p", topic(0)).await.unwrap();
        let (addr, seen) = proxy(server.addr.clone(), 6).await;
        let c = Client::connect(&addr, "test").await.unwrap();
        let producer = Producer::new(
            c,
            ProducerConfig {
                linger: Duration::from_millis(1),
                batch_bytes: 100,
                ..ProducerConfig::default()
            },
        );
        // Each record fills a batch of its own.
        let mut acks = Vec::new();
        for i in 0..40 {
            let r = Record::new("p", format!("{i:0>150}")).partition(0);
            acks.push(producer.send(r).await.unwrap());
        }
        let mut offsets = Vec::new();
        for a in acks {
            offsets.push(a.await.unwrap().unwrap().offset.unwrap());
        }
        assert_eq!(
            offsets,
            (0..40).collect::<Vec<u64>>(),
            "in order, each once"
        );
        // The first batch alone (the server may not know the producer yet), then five.
        assert_eq!(
            seen.load(Ordering::SeqCst),
            6,
            "once the first batch was answered, five were sent before another answer came"
        );
        // Stamped with one producer id, epoch 0 and consecutive sequences.
        let batches = stored(&admin, "p").await;
        let pid = batches[0].0.producer_id;
        assert!(pid >= 0);
        let mut next = 0;
        for (h, values) in &batches {
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (pid, 0, next)
            );
            next += values.len() as i32;
        }
        assert_eq!(next, 40);
    });
}

/// Copies frames from `r` to `w` whole and in order, except the `lost`-th Produce frame
/// (counting from 1), which it drops.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    lost: Option<usize>,
) {
    let (mut buf, mut pending, mut produces) = (vec![0u8; 64 << 10], Vec::new(), 0);
    loop {
        let n = r.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        while pending.len() >= 6 {
            let len = 4 + u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
            if pending.len() < len {
                break;
            }
            let frame: Vec<u8> = pending.drain(..len).collect();
            if u16::from_be_bytes([frame[4], frame[5]]) == weir_wire::Api::Produce as u16 {
                produces += 1;
                if Some(produces) == lost {
                    continue;
                }
            }
            if w.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

/// A proxy between a client and `server` that loses one Produce frame: the client's
/// `request`-th request, or the server's `response`-th answer.
async fn losing_proxy(server: String, request: Option<usize>, response: Option<usize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let upstream = tokio::net::TcpStream::connect(server).await.unwrap();
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        tokio::spawn(pump(ur, cw, response));
        pump(cr, uw, request).await;
    });
    addr
}

/// Sends 12 records of a batch each to partition 0 of `topic` through `addr` (a losing
/// proxy), with requests timing out after 4 s; checks each was acknowledged at its offset in
/// order and that the partition holds exactly them, once each.
async fn twelve_through(admin: &Client, addr: &str, topic: &str) {
    let c = Client::connect(addr, "test")
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(4));
    let producer = Producer::new(
        c,
        ProducerConfig {
            linger: Duration::from_millis(1),
            batch_bytes: 100,
            ..ProducerConfig::default()
        },
    );
    let sent: Vec<String> = (0..12).map(|i| format!("{i:0>150}")).collect();
    let mut acks = Vec::new();
    for v in &sent {
        let r = Record::new(topic, v.clone()).partition(0);
        acks.push(producer.send(r).await.unwrap());
    }
    let mut offsets = Vec::new();
    for a in acks {
        offsets.push(a.await.unwrap().unwrap().offset.unwrap());
    }
    assert_eq!(
        offsets,
        (0..12).collect::<Vec<u64>>(),
        "in order, each once"
    );
    let values: Vec<String> = stored(admin, topic)
        .await
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect();
    assert_eq!(values, sent);
}

#[test]
fn batches_behind_a_lost_one_wait_for_its_resend_and_all_land_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("l", topic(0)).await.unwrap();
        // The third batch never reaches the server; it is resent when its request times out
        // (4 s), longer than the retries of the batches behind it would last (0.1 + 0.2 + … +
        // 1.6 s) if each refusal while it is missing spent one.
        let addr = losing_proxy(server.addr.clone(), Some(3), None).await;
        twelve_through(&admin, &addr, "l").await;
    });
}

#[test]
fn a_batch_whose_answer_was_lost_is_resent_and_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("a", topic(0)).await.unwrap();
        // The third answer is lost: that batch was written, and after the timeout its resend
        // is answered with the offsets it was written at, not written again. Meanwhile no more
        // than four batches go out after it, so the server still remembers it among the
        // producer's last five.
        let addr = losing_proxy(server.addr.clone(), None, Some(3)).await;
        twelve_through(&admin, &addr, "a").await;
    });
}

#[test]
fn after_a_batch_fails_for_good_its_partition_goes_on_in_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        // Batches over 4 KiB are refused (BATCH_TOO_LARGE, not retriable).
        c.create_topic("e", topic(4096)).await.unwrap();
        let producer = Producer::new(
            c.clone(),
            ProducerConfig {
                linger: Duration::from_millis(1),
                batch_bytes: 1024,
                ..ProducerConfig::default()
            },
        );
        let send = |v: String| producer.send_and_wait(Record::new("e", v).partition(0));
        send("a".into()).await.unwrap();
        let big = send("x".repeat(8000)).await.unwrap_err();
        assert_eq!(big.code(), Some(ErrorCode::BatchTooLarge), "{big}");
        // The refused batch used sequence 1; the next would be refused as out of order for
        // ever in epoch 0. It goes out in epoch 1, from 0.
        send("b".into()).await.unwrap();
        send("c".into()).await.unwrap();
        let batches = stored(&c, "e").await;
        let got: Vec<(i16, i32, String)> = batches
            .iter()
            .map(|(h, v)| (h.producer_epoch, h.base_sequence, v.concat()))
            .collect();
        assert_eq!(
            got,
            vec![(0, 0, "a".into()), (1, 0, "b".into()), (1, 1, "c".into())]
        );
    });
}

/// A proxy from its own address to `upstream`, for any number of connections: client bytes
/// go straight through; the server's answers too, except while `hold` is set, when they are
/// kept back (and lost if the server dies), counted in `held`. A connection whose server side
/// closes is closed.
async fn holding_proxy(
    upstream: String,
    hold: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<AtomicUsize>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue; // the server is down: the client sees its connection close
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
            let (hold, held) = (hold.clone(), held.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut kept = Vec::new();
                loop {
                    let n = sr.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return; // dropping `cw` closes the client's side
                    }
                    kept.extend_from_slice(&buf[..n]);
                    if hold.load(Ordering::SeqCst) {
                        held.fetch_add(n, Ordering::SeqCst);
                    } else {
                        if cw.write_all(&kept).await.is_err() {
                            return;
                        }
                        kept.clear();
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_producer_goes_on_across_a_server_crash_and_writes_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed native port, so that the proxy finds the new server where the old one was.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("WEIR_NATIVE__LISTEN", listen.as_str())];
    let server = Server::start(dir.path(), &env);
    common::rt().block_on(async {
        let direct = Client::connect(&server.addr, "direct").await.unwrap();
        direct.create_topic("x", topic(0)).await.unwrap();
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let via = holding_proxy(listen.clone(), hold.clone(), held.clone()).await;
        let c = Client::connect(&via, "test").await.unwrap();
        let producer = Producer::new(
            c,
            ProducerConfig {
                linger: Duration::from_millis(2),
                batch_bytes: 4096,
                ..ProducerConfig::default()
            },
        );
        const N: usize = 6000;
        let sender = {
            let producer = producer.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..N {
                    let r = Record::new("x", format!("{i:06}")).partition(0);
                    acks.push(producer.send(r).await.unwrap());
                    if i % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                acks
            })
        };
        let end = || direct.list_offsets("x", 0, Start::Latest);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let wait_for = |at: u64| async move {
            while end().await.unwrap() < at {
                assert!(std::time::Instant::now() < deadline, "records flow");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        // Once records flow, the server's answers are held back; once one has been (its batch
        // written, its answer not delivered), the server dies, so those answers are lost, and
        // comes back.
        wait_for(1500).await;
        hold.store(true, Ordering::SeqCst);
        while held.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "an answer is held");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.kill9();
        // Down for longer than the default retries' backoff (about 3 s) would cover.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let server = Server::start(dir.path(), &env);
        hold.store(false, Ordering::SeqCst);
        let acks = sender.await.unwrap();
        let mut offsets = Vec::new();
        for a in acks {
            let ack = a.await.unwrap().expect("every record is acknowledged");
            offsets.push(ack.offset.unwrap());
        }
        assert_eq!(
            offsets,
            (0..N as u64).collect::<Vec<_>>(),
            "each once, in order"
        );
        // Batches written before the crash whose answers were lost were sent again, and
        // recognised: each record is stored once.
        let c = Client::connect(&server.addr, "check").await.unwrap();
        let values: Vec<String> = stored(&c, "x")
            .await
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect();
        let expected: Vec<String> = (0..N).map(|i| format!("{i:06}")).collect();
        assert_eq!(values, expected, "stored once each, in order");
    });
}
