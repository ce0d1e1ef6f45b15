//! Overflow policies of native push subscriptions, on the real binary: `DROP_OLDEST` drops
//! and says so, `DISCONNECT` ends a slow subscriber with `SLOW_CONSUMER`, and a subscriber
//! that stops reading slows neither the producer nor another subscriber.

use crate::common;

use std::time::{Duration, Instant};

use common::Server;
use common::raw_subscriber::RawSubscriber;
use weir_client::messages as msg;
use weir_client::{Client, OverflowPolicy, PushEvent, Start, SubscribeOptions};
use weir_wire::{Api, ErrorCode, Flags};

fn topic() -> msg::TopicConfig {
    msg::TopicConfig {
        partitions: 1,
        ..Default::default()
    }
}

/// A batch of `n` records of `size` bytes each.
fn batch(n: usize, size: usize) -> bytes::Bytes {
    let value = vec![b'x'; size];
    let values: Vec<&[u8]> = (0..n).map(|_| &value[..]).collect();
    common::batch(&values)
}

/// Offsets `from..to` seen, delivered or announced as dropped, must tile `0..total` exactly.
fn assert_tiles(mut ranges: Vec<(u64, u64)>, total: u64) {
    ranges.sort_unstable();
    let mut at = 0;
    for (from, to) in ranges {
        assert_eq!(from, at, "gap or overlap at offset {at}");
        at = to;
    }
    assert_eq!(at, total);
}

/// Offsets `from..to` of the batches in a push.
fn range_of(records: &[u8]) -> (u64, u64) {
    let first = weir_batch::peek(records).unwrap();
    let mut at = 0;
    let mut to = 0;
    while at < records.len() {
        let h = weir_batch::peek(&records[at..]).unwrap();
        to = h.next_offset() as u64;
        at += h.total_len();
    }
    (first.base_offset as u64, to)
}

#[test]
fn drop_oldest_announces_what_a_stalled_subscriber_missed_then_delivers_newer_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("WEIR_TOPICS__DURABILITY", "never")]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "producer").await.unwrap();
        c.create_topic("ticks", topic()).await.unwrap();
        let consumer = Client::connect(&server.addr, "slow").await.unwrap();
        let opts = SubscribeOptions {
            policy: OverflowPolicy::DropOldest,
            queue_records: 1_000,
            queue_bytes: 1 << 20,
            ..SubscribeOptions::default()
        };
        let mut sub = consumer
            .subscribe_with("ticks", 0, Start::Earliest, opts)
            .await
            .unwrap();
        // The subscriber does not read while 10,000 records arrive.
        let total = 10_000u64;
        for _ in 0..total / 100 {
            c.produce("ticks", Some(0), None, batch(100, 50))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Then it reads: a drop notice first, then the newest records; then more arrive.
        let mut ranges = Vec::new();
        let mut notices = Vec::new();
        let mut first_event_dropped = None;
        let mut seen = 0;
        while seen < total + 100 {
            if seen == total {
                c.produce("ticks", Some(0), None, batch(100, 50))
                    .await
                    .unwrap();
            }
            let e = tokio::time::timeout(Duration::from_secs(10), sub.next_event())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .unwrap();
            let dropped = matches!(e, PushEvent::Dropped(_));
            first_event_dropped.get_or_insert(dropped);
            match e {
                PushEvent::Dropped(d) => {
                    assert_eq!(d.records, d.to - d.from, "{d:?}");
                    assert!(d.records > 0);
                    ranges.push((d.from, d.to));
                    notices.push(d);
                    seen += d.records;
                }
                PushEvent::Records(b) => {
                    let first = b.records[0].offset;
                    let last = b.records.last().unwrap().offset;
                    assert_eq!(last - first + 1, b.records.len() as u64);
                    ranges.push((first, last + 1));
                    seen += b.records.len() as u64;
                }
                e @ PushEvent::SnapshotEnd { .. } => panic!("not a snapshot: {e:?}"),
            }
        }
        assert_eq!(
            first_event_dropped,
            Some(true),
            "the gap was announced first"
        );
        let dropped: u64 = notices.iter().map(|d| d.records).sum();
        assert!(dropped >= total - 1_000, "dropped {dropped}");
        assert_eq!(sub.dropped_records(), dropped);
        // Delivered and dropped account for every record produced, each once.
        assert_tiles(ranges, total + 100);
    });
    server.stop();
}

#[test]
fn disconnect_ends_a_slow_subscriber_with_slow_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("WEIR_TOPICS__DURABILITY", "never")]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "producer").await.unwrap();
        c.create_topic("ticks", topic()).await.unwrap();
        // Through the client: it stops taking records, its subscription ends with the code.
        let consumer = Client::connect(&server.addr, "slow").await.unwrap();
        let opts = SubscribeOptions {
            policy: OverflowPolicy::Disconnect,
            queue_records: 500,
            ..SubscribeOptions::default()
        };
        let mut sub = consumer
            .subscribe_with("ticks", 0, Start::Earliest, opts)
            .await
            .unwrap();
        // On a raw socket that does not read, the server's queue overflows.
        let mut raw = RawSubscriber::open(
            &server.addr,
            "ticks",
            msg::OverflowPolicy::Disconnect,
            (1_000, 64 << 10),
        )
        .await;
        // 16 MiB in 64 KiB batches: more than the socket buffers and the queue hold.
        for _ in 0..256 {
            c.produce("ticks", Some(0), None, batch(64, 1000))
                .await
                .unwrap();
        }
        let err = loop {
            match tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("an answer within 10 s")
            {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the subscription ended without an error"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.code(), Some(ErrorCode::SlowConsumer), "{err}");
        assert!(err.to_string().contains("slow consumer"), "{err}");
        // The raw subscriber reads at last: records it was sent, then the end.
        let (end, records) = loop {
            let (p, records) = raw.push().await;
            if p.end_code != 0 {
                break (p, records);
            }
            assert_eq!(p.dropped_records, 0, "DISCONNECT never drops and goes on");
        };
        assert!(records.is_empty());
        assert_eq!(end.end_code, ErrorCode::SlowConsumer as u32, "{end:?}");
        assert!(end.end_message.contains("slow consumer"), "{end:?}");
        // The connection stays open: other requests still work on it.
        raw.send(Api::Ping, 9, &msg::Ping {}).await;
        loop {
            let f = raw.frame().await;
            if f.header.correlation_id == 9 {
                assert!(f.header.flags.has(Flags::RESPONSE));
                break;
            }
        }
    });
    server.stop();
}

/// Produces `batches` batches of 100 records at a fixed pace and counts what a fast
/// subscriber receives by the end of the run plus a grace period.
async fn paced_run(c: &Client, addr: &str, topic: &str, batches: u64) -> (u64, Duration) {
    let fast = Client::connect(addr, "fast").await.unwrap();
    let mut sub = fast
        .subscribe(topic, 0, Start::Earliest, 10_000, 4 << 20)
        .await
        .unwrap();
    let period = Duration::from_millis(2);
    let producer = {
        let c = c.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            let start = Instant::now();
            for i in 0..batches {
                c.produce(&topic, Some(0), None, batch(100, 100))
                    .await
                    .unwrap();
                let due = start + period * (i as u32 + 1);
                tokio::time::sleep_until(due.into()).await;
            }
            start.elapsed()
        })
    };
    let deadline = Instant::now() + period * batches as u32 + Duration::from_millis(1500);
    let mut received = 0u64;
    while received < batches * 100 {
        match tokio::time::timeout_at(deadline.into(), sub.next()).await {
            Ok(b) => received += b.unwrap().unwrap().records.len() as u64,
            Err(_) => break,
        }
    }
    let produced_in = producer.await.unwrap();
    (received, produced_in)
}

#[test]
fn a_stalled_subscriber_slows_neither_producers_nor_other_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("WEIR_TOPICS__DURABILITY", "never")]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "producer").await.unwrap();
        let batches = 1_000; // 100,000 records in about 2 s
        c.create_topic("alone", topic()).await.unwrap();
        let (alone, alone_produce) = paced_run(&c, &server.addr, "alone", batches).await;

        // The same run with a subscriber that never reads (raw socket, tiny receive buffer)
        // on the same topic, subscribed before the run starts.
        c.create_topic("shared", topic()).await.unwrap();
        let mut slow = RawSubscriber::open(
            &server.addr,
            "shared",
            msg::OverflowPolicy::DropOldest,
            (1_000, 256 << 10),
        )
        .await;
        // And one through the client that is never polled.
        let idle = Client::connect(&server.addr, "idle").await.unwrap();
        let opts = SubscribeOptions {
            policy: OverflowPolicy::DropOldest,
            queue_records: 1_000,
            ..SubscribeOptions::default()
        };
        let mut unpolled = idle
            .subscribe_with("shared", 0, Start::Earliest, opts)
            .await
            .unwrap();
        let (with_slow, slow_produce) = paced_run(&c, &server.addr, "shared", batches).await;
        eprintln!(
            "fast subscriber: {alone} records alone (produced in {alone_produce:?}), \
             {with_slow} beside a stalled one (produced in {slow_produce:?})"
        );
        assert!(
            with_slow * 10 >= alone * 9,
            "the fast subscriber got {with_slow} records beside a stalled one, {alone} alone"
        );
        assert!(
            slow_produce.as_secs_f64() <= alone_produce.as_secs_f64() * 1.1 + 0.3,
            "producing took {slow_produce:?} beside a stalled subscriber, {alone_produce:?} alone"
        );

        // The stalled subscriber reads at last: a drop notice came, and what it got plus
        // what was dropped is everything, each offset once.
        let total = batches * 100;
        let mut ranges = Vec::new();
        let mut dropped = 0;
        let mut seen = 0;
        while seen < total {
            let (p, records) = slow.push().await;
            assert_eq!(p.end_code, 0, "{p:?}");
            if p.dropped_records > 0 {
                assert_eq!(p.dropped_records, p.skipped_to - p.skipped_from, "{p:?}");
                ranges.push((p.skipped_from, p.skipped_to));
                dropped += p.dropped_records;
                seen += p.dropped_records;
            } else if !records.is_empty() {
                let (from, to) = range_of(&records);
                ranges.push((from, to));
                seen += to - from;
            }
        }
        assert!(dropped > 0, "the stalled subscriber was never behind");
        assert_tiles(ranges, total);
        // The unpolled client held at most its bound and announced the rest.
        let mut ranges = Vec::new();
        let mut seen = 0;
        while seen < total {
            match unpolled.next_event().await.unwrap().unwrap() {
                PushEvent::Dropped(d) => {
                    ranges.push((d.from, d.to));
                    seen += d.records;
                }
                PushEvent::Records(b) => {
                    let first = b.records[0].offset;
                    ranges.push((first, first + b.records.len() as u64));
                    seen += b.records.len() as u64;
                }
                e @ PushEvent::SnapshotEnd { .. } => panic!("not a snapshot: {e:?}"),
            }
        }
        assert!(unpolled.dropped_records() >= total - 1_000);
        assert_tiles(ranges, total);
    });
    server.stop();
}

#[test]
fn queue_bounds_are_capped_and_a_connections_queues_are_bounded_together() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("WEIR_NATIVE__PUSH_QUEUE_MAX_RECORDS", "5000"),
            ("WEIR_NATIVE__PUSH_QUEUE_MAX_BYTES", "1048576"),
            ("WEIR_NATIVE__PUSH_QUEUE_BYTES_PER_CONNECTION", "3145728"),
        ],
    );
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "greedy").await.unwrap();
        c.create_topic("t", topic()).await.unwrap();
        let greedy = SubscribeOptions {
            policy: OverflowPolicy::DropOldest,
            queue_records: u64::MAX,
            queue_bytes: u64::MAX,
            ..SubscribeOptions::default()
        };
        let mut subs = Vec::new();
        for _ in 0..3 {
            let s = c
                .subscribe_with("t", 0, Start::Latest, greedy)
                .await
                .unwrap();
            assert_eq!(s.queue_bounds(), Some((5000, 1 << 20)));
            subs.push(s);
        }
        // A fourth would take the connection past 3 MiB of queues.
        let err = c
            .subscribe_with("t", 0, Start::Latest, greedy)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
        assert!(
            err.to_string().contains("push_queue_bytes_per_connection"),
            "{err}"
        );
        // Credit subscriptions have no queue and still fit; another connection has its own.
        let credit = c
            .subscribe("t", 0, Start::Latest, 10, 1 << 20)
            .await
            .unwrap();
        assert_eq!(credit.queue_bounds(), None);
        let other = Client::connect(&server.addr, "other").await.unwrap();
        let s = other
            .subscribe_with(
                "t",
                0,
                Start::Latest,
                SubscribeOptions {
                    policy: OverflowPolicy::Disconnect,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .unwrap();
        // 0 asks for the defaults, capped: 10,000 records > 5,000.
        assert_eq!(s.queue_bounds(), Some((5000, 1 << 20)));
        // Ending one frees its share.
        subs.pop().unwrap().unsubscribe().await.unwrap();
        c.subscribe_with("t", 0, Start::Latest, greedy)
            .await
            .unwrap();
    });
    server.stop();
}
