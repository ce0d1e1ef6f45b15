//! The real `weir` binary on 127.0.0.1:0, driven by the real client and CLI.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, batch, cli};
use weir_client::consumer::GroupOptions;
use weir_client::messages as msg;
use weir_client::{Client, ClientError, GroupConsumer, PartitionConsumer, Start};
use weir_wire::ErrorCode;

fn topic(partitions: u32) -> msg::TopicConfig {
    msg::TopicConfig {
        partitions,
        ..Default::default()
    }
}

/// A member of `group` reading `topic`, on a connection of its own.
async fn member(addr: &str, group: &str, topic: &str, options: GroupOptions) -> GroupConsumer {
    let c = Client::connect(addr, "member").await.unwrap();
    GroupConsumer::join(c, group, &[topic], options)
        .await
        .unwrap()
}

/// Writes each value to its partition of `topic`, a batch each, in order.
async fn write_each(admin: &Client, topic: &str, records: impl IntoIterator<Item = (u32, String)>) {
    for (p, value) in records {
        admin
            .produce(topic, Some(p), None, batch(&[value.as_bytes()]))
            .await
            .unwrap();
    }
}

/// Creates `name` with `partitions` through the CLI and writes `lines` to it.
fn cli_topic_with(addr: &str, name: &str, partitions: u32, lines: &str) {
    let n = partitions.to_string();
    let (ok, _, err) = cli(addr, &["topic", "create", name, "--partitions", &n], "");
    assert!(ok, "{err}");
    let (ok, _, err) = cli(addr, &["produce", name], lines);
    assert!(ok, "{err}");
}

#[test]
fn round_trip_restart_keeps_topics_data_and_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("orders", topic(3)).await.unwrap();
        let err = c.create_topic("orders", topic(3)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TopicExists));
        let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for i in 0..30 {
            let key = format!("customer-{}", i % 7);
            let value = format!("order-{i}");
            let ack = c
                .produce(
                    "orders",
                    None,
                    Some(key.as_bytes()),
                    batch(&[value.as_bytes()]),
                )
                .await
                .unwrap();
            by_partition.entry(ack.partition).or_default().push(value);
        }
        // The same key always lands on the same partition.
        let again = c
            .produce("orders", None, Some(b"customer-3"), batch(&[b"x"]))
            .await
            .unwrap();
        let first = c
            .produce("orders", None, Some(b"customer-3"), batch(&[b"y"]))
            .await
            .unwrap();
        assert_eq!(again.partition, first.partition);
        by_partition
            .entry(again.partition)
            .or_default()
            .extend(["x".to_string(), "y".to_string()]);
        for (p, values) in &by_partition {
            let mut consumer = PartitionConsumer::new(c.clone(), "orders", *p, Start::Earliest)
                .await
                .unwrap();
            let got: Vec<String> = consumer
                .poll(Duration::from_secs(1))
                .await
                .unwrap()
                .iter()
                .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
                .collect();
            assert_eq!(&got, values, "partition {p}");
        }
        c.commit("billing", None, &[("orders".into(), 0, 2)])
            .await
            .unwrap();
    });
    server.stop();

    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        let meta = c.metadata(&["orders"]).await.unwrap();
        assert_eq!(meta[0].partitions.len(), 3);
        let total: u64 = meta[0].partitions.iter().map(|p| p.high_watermark).sum();
        assert_eq!(total, 32);
        let offsets = c
            .fetch_offsets(
                "billing",
                &[("orders".into(), 0), ("orders".into(), 1)],
                true,
            )
            .await
            .unwrap();
        assert_eq!(offsets[0], ("orders".to_string(), 0, 2));
        assert_eq!(
            offsets[1],
            ("orders".to_string(), 1, 0),
            "no commit: reset to earliest"
        );
    });
    server.stop();
}

/// Long polls on many partitions through one connection, more than its in-flight window
/// (64), all sent in one write: waiting fetches do not count against the window, so the
/// request behind them is read and answered at once, and the last partition's fetch answers
/// as its record arrives. With busy polling on (the default) and off.
#[test]
fn long_polls_on_more_partitions_than_the_window_do_not_stall_the_connection() {
    for env in [&[][..], &[("WEIR_NATIVE__BUSY_POLL_US", "0")][..]] {
        long_polls_on_a_hundred_partitions(env);
    }
}

type Answers = tokio::sync::mpsc::UnboundedReceiver<(u32, Instant, weir_wire::Frame)>;

/// The next answer with correlation `id`, and when it came.
async fn answer(answers: &mut Answers, id: u32) -> (Instant, weir_wire::Frame) {
    loop {
        let (got, at, f) = answers.recv().await.expect("connection open");
        if got == id {
            return (at, f);
        }
    }
}

fn long_polls_on_a_hundred_partitions(env: &[(&str, &str)]) {
    use weir_wire::{Api, Flags, FrameHeader};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);
    let frame = |api: Api, correlation_id: u32, m: &dyn Fn(&mut bytes::BytesMut, FrameHeader)| {
        let mut b = bytes::BytesMut::new();
        let header = FrameHeader {
            api_key: api as u16,
            api_version: api.versions().1,
            correlation_id,
            flags: Flags(0),
        };
        m(&mut b, header);
        b
    };
    let mut burst = frame(Api::Hello, 1, &|b, h| {
        let m = msg::HelloRequest {
            client_id: "wide".into(),
            apis: Api::supported(),
        };
        weir_wire::encode_frame(h, &m, 0, b)
    });
    for p in 0..100u32 {
        burst.extend(frame(Api::Fetch, 100 + p, &|b, h| {
            let m = msg::FetchRequest {
                topic: "wide".into(),
                partition: p,
                offset: 0,
                max_bytes: 1 << 20,
                min_bytes: 1,
                max_wait_ms: 20_000,
            };
            weir_wire::encode_frame(h, &m, 0, b)
        }));
    }
    burst.extend(frame(Api::Metadata, 7, &|b, h| {
        let m = msg::MetadataRequest {
            topics: vec!["wide".into()],
        };
        weir_wire::encode_frame(h, &m, 0, b)
    }));
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("wide", topic(100)).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, &burst)
            .await
            .unwrap();
        // Answers by correlation id, as they come.
        let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = bytes::BytesMut::new();
            loop {
                while let Ok(Some(f)) = weir_wire::decode_frame(&mut buf, 4 << 20) {
                    let _ = tx.send((f.header.correlation_id, Instant::now(), f));
                }
                match tokio::io::AsyncReadExt::read_buf(&mut s, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        let t = Instant::now();
        let (at, _) = tokio::time::timeout(Duration::from_secs(10), answer(&mut answers, 7))
            .await
            .expect("metadata answered");
        assert!(
            at - t < Duration::from_secs(3),
            "metadata waited {:?} behind the long polls ({env:?})",
            at - t
        );
        let t = Instant::now();
        c.produce("wide", Some(99), None, batch(&[b"last"]))
            .await
            .unwrap();
        let (at, f) = tokio::time::timeout(Duration::from_secs(25), answer(&mut answers, 199))
            .await
            .expect("partition 99 answered");
        assert!(!f.records.is_empty(), "{f:?}");
        assert!(
            at - t < Duration::from_secs(3),
            "partition 99's long poll answered after {:?} ({env:?})",
            at - t
        );
    });
    server.stop();
}

#[test]
fn long_poll_answers_the_moment_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("ticks", topic(1)).await.unwrap();
        let producer = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            producer
                .produce("ticks", Some(0), None, batch(&[b"tick"]))
                .await
                .unwrap();
        });
        let t = Instant::now();
        let f = c
            .fetch("ticks", 0, 0, 1 << 20, 1, Duration::from_secs(10))
            .await
            .unwrap();
        let waited = t.elapsed();
        assert!(!f.batches.is_empty());
        assert!(
            waited >= Duration::from_millis(250),
            "answered before the data existed: {waited:?}"
        );
        assert!(waited < Duration::from_secs(3), "answered late: {waited:?}");
        // Without data, it waits the full max_wait and returns empty.
        let t = Instant::now();
        let f = c
            .fetch("ticks", 0, 1, 1 << 20, 1, Duration::from_millis(400))
            .await
            .unwrap();
        assert!(f.batches.is_empty());
        assert!(t.elapsed() >= Duration::from_millis(350));
    });
}

#[test]
fn a_consumer_poll_waits_no_longer_than_asked_while_its_prefetch_waits_for_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("quotes", topic(1)).await.unwrap();
        c.produce("quotes", Some(0), None, batch(&[b"a", b"b"]))
            .await
            .unwrap();
        let mut consumer = PartitionConsumer::new(c.clone(), "quotes", 0, Start::Earliest)
            .await
            .unwrap();
        // The first poll returns the records; the fetch it sends ahead then waits at the end
        // of the log, for up to 10 s.
        assert_eq!(
            consumer.poll(Duration::from_secs(10)).await.unwrap().len(),
            2
        );
        let t = Instant::now();
        let none = consumer.poll(Duration::from_millis(100)).await.unwrap();
        assert!(none.is_empty());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "waited {:?}",
            t.elapsed()
        );
        // That fetch is still under way and answers the moment data arrives.
        c.produce("quotes", Some(0), None, batch(&[b"c"]))
            .await
            .unwrap();
        let t = Instant::now();
        let got = consumer.poll(Duration::from_secs(10)).await.unwrap();
        assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2]);
        assert_eq!(got[0].value.as_deref(), Some(&b"c"[..]));
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "waited {:?}",
            t.elapsed()
        );
        assert_eq!(consumer.position(), 3);
    });
    server.stop();
}

/// Fetch requests the server has received, from its `/metrics`.
async fn fetches_received(http: &str) -> u64 {
    requests_received(http, "fetch").await
}

/// Native requests of one API the server has read, from its /metrics.
async fn requests_received(http: &str, api: &str) -> u64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("weir_native_requests_total{{api=\"{api}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Consumers sharing a `FetchLimit` hold no more answers between them than the limit,
/// however many partitions they read (without it, each fetches two ahead of its polls), read
/// everything when polled together, and once caught up all wait for records at once.
#[test]
fn consumers_sharing_a_fetch_limit_hold_no_more_answers_than_it() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("many", topic(20)).await.unwrap();
        for p in 0..20u32 {
            for i in 0..5u8 {
                c.produce("many", Some(p), None, batch(&[&[i; 100]]))
                    .await
                    .unwrap();
            }
        }
        let limit = weir_client::FetchLimit::new(4);
        let mut consumers = Vec::new();
        for p in 0..20u32 {
            let mut pc = PartitionConsumer::new(c.clone(), "many", p, Start::Earliest)
                .await
                .unwrap();
            // One batch per answer.
            pc.max_bytes = 1;
            pc.share_limit(&limit);
            consumers.push(pc);
        }
        let before = fetches_received(&server.http).await;
        // One poll each, in turn: answers taken, and what the fetchers then hold.
        let mut taken = 0u64;
        let mut read = 0usize;
        for pc in consumers.iter_mut() {
            let got = pc.poll(Duration::from_millis(100)).await.unwrap();
            taken += u64::from(!got.is_empty());
            read += got.len();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fetched = fetches_received(&server.http).await - before;
        assert!(taken >= 1);
        assert!(
            fetched <= taken + 4,
            "{fetched} fetches for {taken} answers taken: more than 4 held"
        );
        // Polled together, they read every record.
        let deadline = Instant::now() + Duration::from_secs(10);
        while read < 100 {
            let mut polls: futures::stream::FuturesUnordered<_> = consumers
                .iter_mut()
                .map(|pc| pc.poll(Duration::from_millis(100)))
                .collect();
            while let Some(got) = polls.next().await {
                read += got.unwrap().len();
            }
            assert!(Instant::now() < deadline, "read {read} of 100");
        }
        assert_eq!(read, 100);
        // Caught up, all twenty wait at once, holding no place: a record on the last
        // partition comes as soon as it is written.
        let producer = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            producer
                .produce("many", Some(19), None, batch(&[b"late"]))
                .await
                .unwrap();
        });
        let t = Instant::now();
        let mut polls: futures::stream::FuturesUnordered<_> = consumers
            .iter_mut()
            .map(|pc| pc.poll(Duration::from_secs(5)))
            .collect();
        let got = loop {
            let got = polls.next().await.expect("a poll").unwrap();
            if !got.is_empty() {
                break got;
            }
        };
        assert_eq!(got[0].value.as_deref(), Some(&b"late"[..]));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the late record came after {:?}",
            t.elapsed()
        );
    });
    server.stop();
}

/// A `PartitionConsumer` sends its next fetch the moment an answer arrives, not when the
/// application polls again; and with two answers waiting beside the one handed out it sends
/// no more, however long the application takes.
#[test]
fn a_consumer_fetches_ahead_of_its_polls_two_answers_deep_and_no_further() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("deep", topic(1)).await.unwrap();
        for i in 0..10u8 {
            c.produce("deep", Some(0), None, batch(&[&[i; 100]]))
                .await
                .unwrap();
        }
        let mut consumer = PartitionConsumer::new(c.clone(), "deep", 0, Start::Earliest)
            .await
            .unwrap();
        // One batch per answer: a fetch returns at least one whole batch.
        consumer.max_bytes = 1;
        let first = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(first.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while fetches_received(&server.http).await < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Time for any further fetch to show.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            fetches_received(&server.http).await,
            3,
            "the answer handed out, one waiting, one more"
        );
        // The answers taken ahead are the next batches, in order, none skipped.
        for i in 1..10u64 {
            let got = consumer.poll(Duration::from_secs(5)).await.unwrap();
            assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![i]);
            assert_eq!(got[0].value.as_deref(), Some(&[i as u8; 100][..]));
        }
        assert_eq!(consumer.position(), 10);
    });
    server.stop();
}

/// A consumer at the end of the log long-polls with its latest poll's wait: a first poll
/// that asked not to wait does not leave its fetches spinning without a wait.
#[test]
fn a_caught_up_consumer_long_polls_with_its_latest_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("quiet", topic(1)).await.unwrap();
        let mut consumer = PartitionConsumer::new(c.clone(), "quiet", 0, Start::Earliest)
            .await
            .unwrap();
        assert!(consumer.poll(Duration::ZERO).await.unwrap().is_empty());
        // The fetch under way was sent without a wait; the ones after it wait 1 s.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = fetches_received(&server.http).await;
        assert!(
            consumer
                .poll(Duration::from_millis(1500))
                .await
                .unwrap()
                .is_empty()
        );
        let during = fetches_received(&server.http).await - before;
        assert!(
            during <= 4,
            "{during} fetches in 1.5 s at the end of the log"
        );
    });
    server.stop();
}

#[test]
fn push_subscriptions_never_exceed_their_credit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("feed", topic(1)).await.unwrap();
        for i in 0..50u32 {
            c.produce("feed", Some(0), None, batch(&[&i.to_be_bytes()]))
                .await
                .unwrap();
        }
        let consumer = Client::connect(&server.addr, "test").await.unwrap();
        let mut sub = consumer
            .subscribe("feed", 0, Start::Earliest, 10, 1 << 20)
            .await
            .unwrap();
        let mut received = 0u64;
        // Take without granting back: the server must stop at 10 records.
        while received < 10 {
            let b = tokio::time::timeout(Duration::from_secs(5), sub.next_without_credit())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            received += b.records.len() as u64;
        }
        assert_eq!(received, 10);
        let more =
            tokio::time::timeout(Duration::from_millis(500), sub.next_without_credit()).await;
        assert!(more.is_err(), "the server pushed beyond the credit");
        sub.grant(5, 1 << 20).unwrap();
        let mut extra = 0;
        while extra < 5 {
            let b = tokio::time::timeout(Duration::from_secs(5), sub.next_without_credit())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            extra += b.records.len();
            assert_eq!(
                b.records[0].offset,
                10 + extra as u64 - b.records.len() as u64
            );
        }
        assert_eq!(extra, 5);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), sub.next_without_credit())
                .await
                .is_err()
        );
        // With credit re-granted as it goes, it follows the tail, in order.
        sub.grant(1000, 1 << 20).unwrap();
        c.produce("feed", Some(0), None, batch(&[b"late"]))
            .await
            .unwrap();
        let mut last = 0;
        while last < 50 {
            let b = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            last = b.records.last().unwrap().offset;
        }
        assert_eq!(last, 50);
    });
}

/// `Subscription::next` gives credit back half a window at a time, not one Credit frame per
/// pushed batch, and a subscriber taking one record at a time still never stalls.
#[test]
fn a_subscription_grants_its_credit_back_half_a_window_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("trickle", topic(1)).await.unwrap();
        let consumer = Client::connect(&server.addr, "test").await.unwrap();
        let mut sub = consumer
            .subscribe("trickle", 0, Start::Earliest, 10, 1 << 20)
            .await
            .unwrap();
        let before = requests_received(&server.http, "credit").await;
        // One record at a time, each taken before the next is written: 40 pushes in all,
        // four windows' worth.
        for i in 0..40u32 {
            c.produce("trickle", Some(0), None, batch(&[&i.to_be_bytes()]))
                .await
                .unwrap();
            let b = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("stalled")
                .unwrap()
                .unwrap();
            assert_eq!(b.records.len(), 1);
            assert_eq!(b.records[0].offset, u64::from(i));
        }
        // Credit frames carry no response: wait until the server has read the last of them.
        let mut granted = 0;
        for _ in 0..50 {
            granted = requests_received(&server.http, "credit").await - before;
            if granted >= 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(granted, 8, "one grant per 5 records taken, half the window");
    });
    server.stop();
}

/// A group member waits on all its partitions at once: a record on either of its two
/// partitions ends a waiting poll at once, whichever partition it looked at last.
#[test]
fn a_group_members_poll_returns_when_any_of_its_partitions_gets_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("pair", topic(2)).await.unwrap();
        let mut member = member(&server.addr, "watchers", "pair", GroupOptions::default()).await;
        assert_eq!(member.assignment().len(), 2, "the only member owns both");
        assert!(
            member
                .poll(Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty()
        );
        for (i, p) in [0u32, 1, 0, 1].into_iter().enumerate() {
            poll_gets_a_late_record(&mut member, &admin, "pair", p, &format!("r{i}"), 200).await;
        }
        member.commit().await.unwrap();
        member.leave().await.unwrap();
    });
    server.stop();
}

/// Polls `member` (waiting up to 10 s) while `value` is written to `partition` of `topic`
/// `after_ms` into the poll; the poll returns that record alone, within 3 s.
async fn poll_gets_a_late_record(
    member: &mut GroupConsumer,
    admin: &Client,
    topic: &str,
    partition: u32,
    value: &str,
    after_ms: u64,
) {
    let t = Instant::now();
    let (got, ()) = tokio::join!(member.poll(Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        admin
            .produce(topic, Some(partition), None, batch(&[value.as_bytes()]))
            .await
            .unwrap();
    });
    let got = got.unwrap();
    assert_eq!(got.len(), 1, "{value} on partition {partition}");
    assert_eq!(got[0].partition, partition);
    assert_eq!(got[0].value.as_deref(), Some(value.as_bytes()));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "{value} on partition {partition} waited {:?}",
        t.elapsed()
    );
}

/// A member owning more partitions than it fetches ahead at once (16) reads every record of
/// each, once; and while they are quiet it asks each about once per poll's wait, without
/// spinning: whether it long-polls them (the default, up to 512) or, owning more than its
/// `max_long_polls`, asks again after each wait.
#[test]
fn a_group_member_with_many_partitions_reads_them_all_and_rests_while_they_are_quiet() {
    many_partitions(GroupOptions {
        max_long_polls: 16,
        ..GroupOptions::default()
    });
    many_partitions(GroupOptions::default());
}

/// A member long-polling its 24 partitions gets a record on any of them within its poll,
/// whatever the poll's wait.
#[test]
fn a_group_member_long_polling_many_partitions_gets_a_record_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("wide", topic(24)).await.unwrap();
        let mut member = member(&server.addr, "readers", "wide", GroupOptions::default()).await;
        // Caught up on every partition first.
        while member.lag() != Some(0) {
            assert!(
                member
                    .poll(Duration::from_millis(100))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        for p in [3u32, 23, 11] {
            poll_gets_a_late_record(&mut member, &admin, "wide", p, &format!("late-{p}"), 300)
                .await;
        }
        member.leave().await.unwrap();
    });
    server.stop();
}

fn many_partitions(options: GroupOptions) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("wide", topic(24)).await.unwrap();
        let mut expected = BTreeSet::new();
        for p in 0..24u32 {
            for i in 0..2 {
                let value = format!("p{p}-{i}");
                admin
                    .produce("wide", Some(p), None, batch(&[value.as_bytes()]))
                    .await
                    .unwrap();
                expected.insert(value);
            }
        }
        let mut member = member(&server.addr, "readers", "wide", options).await;
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < expected.len() && Instant::now() < deadline {
            for r in member.poll(Duration::from_millis(500)).await.unwrap() {
                seen.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        let distinct: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(distinct, expected);
        assert_eq!(seen.len(), expected.len(), "each record once");
        let before = fetches_received(&server.http).await;
        for _ in 0..2 {
            assert!(
                member
                    .poll(Duration::from_secs(1))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        let during = fetches_received(&server.http).await - before;
        assert!(
            during <= 24 * 4,
            "{during} fetches of 24 quiet partitions in 2 s"
        );
        // After a long wait, shorter polls: a quiet partition is asked again within the
        // latest poll's wait, not the 5 s of the earlier one.
        assert!(
            member
                .poll(Duration::from_secs(5))
                .await
                .unwrap()
                .is_empty()
        );
        // The application busy elsewhere: the partitions rest their 5 s from where they are.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        admin
            .produce("wide", Some(7), None, batch(&[b"late"]))
            .await
            .unwrap();
        let t = Instant::now();
        let mut got = Vec::new();
        while got.is_empty() && t.elapsed() < Duration::from_secs(10) {
            got = member.poll(Duration::from_millis(200)).await.unwrap();
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].value.as_deref(), Some(&b"late"[..]));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "waited {:?}",
            t.elapsed()
        );
        member.leave().await.unwrap();
    });
    server.stop();
}

/// `weir consume --group --max N` commits only what it printed: the next member of the group
/// reads on from the record after the last one printed, though they came in one answer.
#[test]
fn cli_group_consume_with_max_commits_only_what_it_printed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let a = &server.addr;
    let lines: String = (0..20).map(|i| format!("job-{i}\n")).collect();
    cli_topic_with(a, "jobs", 1, &lines);
    let (ok, out, err) = cli(a, &["consume", "jobs", "--group", "g", "--max", "0"], "");
    assert!(ok && out.is_empty(), "{out}{err}");
    let (ok, out, err) = cli(a, &["consume", "jobs", "--max", "0"], "");
    assert!(ok && out.is_empty(), "{out}{err}");
    let (ok, out, err) = cli(a, &["consume", "jobs", "--group", "g", "--max", "5"], "");
    assert!(ok, "{err}");
    let first: Vec<&str> = out.lines().collect();
    assert_eq!(
        first,
        (0..5).map(|i| format!("job-{i}")).collect::<Vec<_>>()
    );
    let (ok, out, err) = cli(a, &["consume", "jobs", "--group", "g"], "");
    assert!(ok, "{err}");
    let rest: Vec<&str> = out.lines().collect();
    assert_eq!(
        rest,
        (5..20).map(|i| format!("job-{i}")).collect::<Vec<_>>()
    );
    server.stop();
}

/// `weir consume` without --follow reads each partition to where it ended when it started
/// and stops, while producers keep writing to all of them: partitions read to their end
/// must not keep holding the answers they fetch ahead.
#[test]
fn cli_consume_stops_at_the_end_while_producers_keep_writing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let rt = common::rt();
    let admin = rt.block_on(Client::connect(&server.addr, "admin")).unwrap();
    rt.block_on(admin.create_topic("busy", topic(20))).unwrap();
    // Three answers' worth (1 MiB each) per partition.
    let pad = "x".repeat(10_000);
    for p in 0..20u32 {
        for i in 0..300 {
            let value = format!("p{p}-{i}-{pad}");
            rt.block_on(admin.produce("busy", Some(p), None, batch(&[value.as_bytes()])))
                .unwrap();
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (admin, stop) = (admin.clone(), stop.clone());
        rt.spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let value = format!("more-{n}");
                admin
                    .produce(
                        "busy",
                        Some((n % 20) as u32),
                        None,
                        batch(&[value.as_bytes()]),
                    )
                    .await
                    .unwrap();
                n += 1;
            }
        })
    };
    let t = Instant::now();
    let (ok, out, err) = cli(&server.addr, &["consume", "busy"], "");
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(writer).unwrap();
    assert!(ok, "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let first: BTreeSet<&str> = out.lines().filter(|l| l.starts_with('p')).collect();
    assert_eq!(first.len(), 6000, "every record written before it started");
    server.stop();
}

/// A member that read and then saw another join commits what it still owns (it rejoins when
/// the server refuses the old generation), and tells when it has caught up.
#[test]
fn a_group_member_commits_across_a_rebalance_and_knows_when_it_has_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("tasks", topic(4)).await.unwrap();
        write_each(
            &admin,
            "tasks",
            (0..40u32).map(|i| (i % 4, format!("task-{i}"))),
        )
        .await;
        let join = || member(&server.addr, "crew", "tasks", GroupOptions::default());
        let mut a = join().await;
        assert_eq!(a.lag(), None, "nothing fetched yet");
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.lag() != Some(0) {
            read += a.poll(Duration::from_millis(100)).await.unwrap().len();
            assert!(Instant::now() < deadline, "lag stayed at {:?}", a.lag());
        }
        assert_eq!(read, 40, "caught up means every record read");
        // A second member joins: the group moves to a new generation, and `a` keeps two of
        // its four partitions (sticky).
        let _b = join().await;
        a.commit().await.unwrap();
        let kept = a.assignment();
        assert_eq!(kept.len(), 2, "{kept:?}");
        let desc = admin.describe_group("crew").await.unwrap();
        for (t, p) in &kept {
            let l = desc
                .lag
                .iter()
                .find(|l| &l.topic == t && l.partition == *p)
                .unwrap();
            assert_eq!(l.lag, 0, "{t}/{p} committed at its end: {:?}", desc.lag);
        }
        // More records: not caught up until they are read.
        let (t, p) = &kept[0];
        admin
            .produce(t, Some(*p), None, batch(&[b"late"]))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = a.poll(Duration::from_millis(100)).await.unwrap();
            if got.iter().any(|r| r.value.as_deref() == Some(&b"late"[..])) {
                break;
            }
            assert!(Instant::now() < deadline, "the late record never came");
        }
        assert_eq!(a.lag(), Some(0));
    });
    server.stop();
}

/// A waiting heartbeat answers the moment its group rebalances: a member learns of a new
/// member long before its next heartbeat would have been due. While it waits, the member's
/// connection serves other requests, and a heartbeat that sees no rebalance waits its time
/// and keeps the session alive.
#[test]
fn a_waiting_heartbeat_answers_when_its_group_rebalances() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("jobs", topic(4)).await.unwrap();
        // A 30 s session: heartbeats every 10 s.
        let options = GroupOptions {
            session_timeout: Duration::from_secs(30),
            ..GroupOptions::default()
        };
        let mut a = member(&server.addr, "crew", "jobs", options.clone()).await;
        assert_eq!(a.assignment().len(), 4);

        // Raw heartbeats, on a connection of their own: one with nothing to wait for.
        let raw = Client::connect(&server.addr, "raw").await.unwrap();
        let t = Instant::now();
        raw.heartbeat_wait(
            "crew",
            a.member_id(),
            a.generation(),
            Duration::from_millis(600),
        )
        .await
        .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(550),
            "held {:?}",
            t.elapsed()
        );

        // One that waits while another member joins; the connection answers a ping meanwhile.
        let (member_id, generation) = (a.member_id().to_string(), a.generation());
        let waiting = {
            let raw = raw.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = raw
                    .heartbeat_wait("crew", &member_id, generation, Duration::from_secs(10))
                    .await;
                (r, t.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        raw.ping().await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "ping took {:?}",
            t.elapsed()
        );
        let joined = Instant::now();
        let _b = member(&server.addr, "crew", "jobs", options.clone()).await;
        let (r, held) = waiting.await.unwrap();
        assert!(
            r.unwrap_err().is_rebalance(),
            "a rebalance, not an answer at the deadline"
        );
        assert!(held < Duration::from_secs(5), "answered after {held:?}");

        // The member itself follows the rebalance at once, not at its next heartbeat (10 s).
        while a.assignment().len() != 2 {
            a.poll(Duration::from_millis(100)).await.unwrap();
            assert!(
                joined.elapsed() < Duration::from_secs(5),
                "still {:?} after {:?}",
                a.assignment(),
                joined.elapsed()
            );
        }
    });
    server.stop();
}

/// `seek`: back behind the committed offset, the position survives a rebalance until the
/// next commit; past the end, reading goes on from the end (not from the start, as when
/// retention passed the position).
#[test]
fn a_group_member_seeks_back_across_a_rebalance_and_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("one", topic(1)).await.unwrap();
        write_each(&admin, "one", (0..10u32).map(|i| (0, format!("r{i}")))).await;
        let join = || member(&server.addr, "seekers", "one", GroupOptions::default());
        let mut a = join().await;
        let mut read = 0;
        while read < 10 {
            read += a.poll(Duration::from_secs(5)).await.unwrap().len();
        }
        a.commit().await.unwrap();
        a.seek("one", 0, 5).unwrap();
        assert!(a.seek("one", 1, 0).is_err(), "not an owned partition");
        // Another member joins: a rebalance, which `a` follows as its commit is refused; it
        // keeps the only partition (sticky), and commits where it sought to.
        let _b = join().await;
        a.commit().await.unwrap();
        assert_eq!(a.assignment(), vec![("one".to_string(), 0)]);
        assert_eq!(admin.describe_group("seekers").await.unwrap().lag[0].lag, 5);
        let got = a.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.first().map(|r| r.offset), Some(5), "{got:?}");
        // Past the end: the next record written is the next one read.
        a.seek("one", 0, 1000).unwrap();
        let (got, ()) = tokio::join!(a.poll(Duration::from_secs(5)), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            admin
                .produce("one", Some(0), None, batch(&[b"r10"]))
                .await
                .unwrap();
        });
        let mut got = got.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.is_empty() && Instant::now() < deadline {
            got = a.poll(Duration::from_millis(500)).await.unwrap();
        }
        assert_eq!(got.first().map(|r| r.offset), Some(10), "{got:?}");
    });
    server.stop();
}

/// Two `weir consume --group` at once on a topic of 40 partitions (more than a member fetches
/// ahead at once): the group rebalances under them, both stop once caught up, and between them
/// they print every record.
#[test]
fn two_cli_group_consumers_at_once_read_everything_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let a = &server.addr;
    let lines: String = (0..100_000).map(|i| format!("r{i}\n")).collect();
    cli_topic_with(a, "wide", 40, &lines);
    // Each on a thread of its own, bounded in time by `cli`.
    let addr = a.to_string();
    let consume = move || {
        let addr = addr.clone();
        std::thread::spawn(move || cli(&addr, &["consume", "wide", "--group", "pair"], ""))
    };
    let first = consume();
    std::thread::sleep(Duration::from_millis(50));
    let second = consume();
    let mut seen = BTreeSet::new();
    for r in [first, second] {
        let (ok, out, err) = r.join().unwrap();
        assert!(ok, "{err}");
        seen.extend(out.lines().map(String::from));
    }
    assert_eq!(
        seen.len(),
        100_000,
        "every record printed by one or the other"
    );
    let (ok, out, _) = cli(a, &["group", "describe", "pair", "--json"], "");
    assert!(ok, "{out}");
    let d: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let lag: u64 = d["lag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(lag, 0, "{out}");
    server.stop();
}

#[test]
fn group_members_share_partitions_and_a_dead_members_move_after_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("WEIR_GROUPS__MIN_SESSION_MS", "200")]);
    common::rt().block_on(async {
        let admin = Client::connect(&server.addr, "admin").await.unwrap();
        admin.create_topic("jobs", topic(6)).await.unwrap();
        for i in 0..60u32 {
            admin
                .produce(
                    "jobs",
                    Some(i % 6),
                    None,
                    batch(&[format!("job-{i}").as_bytes()]),
                )
                .await
                .unwrap();
        }
        let options = GroupOptions {
            session_timeout: Duration::from_millis(600),
            ..GroupOptions::default()
        };
        let mut members = Vec::new();
        for _ in 0..3 {
            let c = Client::connect(&server.addr, "worker").await.unwrap();
            members.push(
                GroupConsumer::join(c, "workers", &["jobs"], options.clone())
                    .await
                    .unwrap(),
            );
        }
        // Let everyone converge on the latest generation.
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for _ in 0..20 {
            for m in members.iter_mut() {
                for r in m.poll(Duration::from_millis(50)).await.unwrap() {
                    seen.insert(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
                }
                let _ = m.commit().await;
            }
        }
        let owned: Vec<usize> = members.iter().map(|m| m.assignment().len()).collect();
        assert_eq!(
            owned,
            vec![2, 2, 2],
            "six partitions spread over three members"
        );
        assert_eq!(seen.len(), 60, "every job read once the group settled");

        // Member 0 dies without leaving: its partitions move once its session expires.
        let dead = members.remove(0);
        let dead_parts = dead.assignment();
        drop(dead);
        for i in 60..90u32 {
            admin
                .produce(
                    "jobs",
                    Some(i % 6),
                    None,
                    batch(&[format!("job-{i}").as_bytes()]),
                )
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for m in members.iter_mut() {
                for r in m.poll(Duration::from_millis(50)).await.unwrap() {
                    seen.insert(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
                }
                let _ = m.commit().await;
            }
            let covered: BTreeSet<(String, u32)> =
                members.iter().flat_map(|m| m.assignment()).collect();
            if covered.len() == 6 && seen.len() == 90 {
                assert!(dead_parts.iter().all(|p| covered.contains(p)));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partitions did not move: {covered:?}, seen {}",
                seen.len()
            );
        }
        // Committed offsets: nothing committed is lost, every partition is at its end.
        let desc = admin.describe_group("workers").await.unwrap();
        assert_eq!(desc.members.len(), 2);
        let lag: u64 = desc.lag.iter().map(|l| l.lag).sum();
        assert_eq!(lag, 0, "{:?}", desc.lag);
    });
}

#[test]
fn bad_input_gets_an_error_or_a_closed_connection_and_others_keep_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("WEIR_NATIVE__MAX_FRAME_BYTES", "65536"),
            ("WEIR_TOPICS__MAX_PARTITIONS", "4096"),
        ],
    );
    let addr = server.addr.clone();
    let read_error = |s: &mut TcpStream| -> Option<(u32, String)> {
        let mut buf: Vec<u8> = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some(f)) =
                weir_wire::decode_frame(&mut bytes::BytesMut::from(&buf[..]), 1 << 20)
            {
                if f.header.flags.has(weir_wire::Flags::ERROR) {
                    let e: msg::ErrorResponse = prost::Message::decode(f.message).unwrap();
                    return Some((e.code, e.message));
                }
                return None;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    // Random bytes: a bad frame error, then the connection closes.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&[0, 0, 0, 2, 0xde, 0xad]).unwrap();
    let (code, _) = read_error(&mut s).expect("an error frame");
    assert_eq!(code, ErrorCode::Malformed as u32);
    // An oversized frame is refused before the server reads (or allocates) it.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&[0x10, 0, 0, 0]).unwrap();
    let (code, message) = read_error(&mut s).expect("an error frame");
    assert_eq!(code, ErrorCode::FrameTooLarge as u32, "{message}");
    // A truncated frame followed by a hang-up.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&[0, 0, 0, 100, 0, 5]).unwrap();
    drop(s);

    common::rt().block_on(async {
        let c = Client::connect(&addr, "test").await.unwrap();
        c.create_topic("t", topic(1)).await.unwrap();
        // A corrupt batch: the CRC no longer matches.
        let mut bad = batch(&[b"hello"]).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let err = c.produce("t", Some(0), None, bad.into()).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidBatch), "{err}");
        assert!(err.to_string().contains("CRC"), "{err}");
        let err = c
            .produce("nope", None, None, batch(&[b"x"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
        let err = c
            .produce("t", Some(9), None, batch(&[b"x"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownPartition));
        let err = c
            .fetch("t", 0, 99, 1000, 0, Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));
        let err = c.create_topic("bad name!", topic(1)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidConfig));
        let err = c.create_topic("huge", topic(9000)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidConfig));
        assert!(err.to_string().contains("limit"), "{err}");
        // The same connection still works, and nothing bad was stored.
        c.produce("t", Some(0), None, batch(&[b"good"]))
            .await
            .unwrap();
        assert_eq!(
            c.metadata(&["t"]).await.unwrap()[0].partitions[0].high_watermark,
            1
        );
    });

    // Unknown API, wrong version, and a request before Hello: error frames, connection usable.
    let mut s = TcpStream::connect(&addr).unwrap();
    let frame = |api: u16, version: u16, corr: u32, m: &dyn Fn(&mut bytes::BytesMut)| {
        let mut b = bytes::BytesMut::new();
        m(&mut b);
        let mut out = Vec::new();
        out.extend_from_slice(&((10 + b.len()) as u32).to_be_bytes());
        out.extend_from_slice(&api.to_be_bytes());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&corr.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&b);
        out
    };
    s.write_all(&frame(4, 1, 1, &|_| {})).unwrap();
    assert_eq!(
        read_error(&mut s).unwrap().0,
        ErrorCode::HelloRequired as u32
    );
    s.write_all(&frame(999, 1, 2, &|_| {})).unwrap();
    assert_eq!(read_error(&mut s).unwrap().0, ErrorCode::UnknownApi as u32);
    s.write_all(&frame(4, 77, 3, &|_| {})).unwrap();
    assert_eq!(
        read_error(&mut s).unwrap().0,
        ErrorCode::UnsupportedVersion as u32
    );
    server.stop();
}

#[test]
fn shutdown_under_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.clone();
    let runtime = common::rt();
    let acked = runtime.block_on(async {
        let c = Client::connect(&addr, "test").await.unwrap();
        c.create_topic("load", topic(2)).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..4u32 {
            let c = Client::connect(&addr, "load").await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    let value = format!("{t}-{i}");
                    match c
                        .produce("load", Some(t % 2), None, batch(&[value.as_bytes()]))
                        .await
                    {
                        Ok(a) => acked.push((a.partition, a.base_offset, value)),
                        Err(_) => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = server.pid();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    server.wait_exit();
    assert!(acked.len() > 10, "load ran: {}", acked.len());
    let server = Server::start(dir.path(), &[]);
    runtime.block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        for p in 0..2 {
            let mut consumer = PartitionConsumer::new(c.clone(), "load", p, Start::Earliest)
                .await
                .unwrap();
            let mut stored = BTreeMap::new();
            loop {
                let recs = consumer.poll(Duration::from_millis(100)).await.unwrap();
                if recs.is_empty() {
                    break;
                }
                for r in recs {
                    stored.insert(
                        r.offset,
                        String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                    );
                }
            }
            for (partition, offset, value) in acked.iter().filter(|a| a.0 == p) {
                assert_eq!(
                    stored.get(offset),
                    Some(value),
                    "acknowledged {partition}/{offset} lost"
                );
            }
        }
    });
}

#[test]
fn cli_topics_produce_consume_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let a = &server.addr;
    let (ok, out, err) = cli(
        a,
        &[
            "topic",
            "create",
            "logs",
            "--partitions",
            "2",
            "--durability",
            "interval:50",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(out.contains("interval:50"), "{out}");
    let (ok, out, _) = cli(a, &["topic", "list"], "");
    assert!(ok && out.contains("logs\tpartitions=2"), "{out}");
    let (ok, _, err) = cli(
        a,
        &[
            "produce",
            "logs",
            "--key-separator",
            ":",
            "--header",
            "source=test",
        ],
        "k1:first\nk2:second\nk1:third\n",
    );
    assert!(ok, "{err}");
    assert!(err.contains("produced 3 records"), "{err}");
    let (ok, out, err) = cli(a, &["consume", "logs", "--output", "json"], "");
    assert!(ok, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{out}");
    let k1: Vec<&str> = records
        .iter()
        .filter(|r| r["key"] == "k1")
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        k1,
        vec!["first", "third"],
        "same key, same partition, in order"
    );
    assert!(records.iter().all(|r| r["headers"]["source"] == "test"));
    let (ok, out, _) = cli(a, &["consume", "logs", "--group", "readers"], "");
    assert!(ok);
    assert_eq!(out.lines().count(), 3);
    let (ok, out, _) = cli(a, &["group", "list"], "");
    assert!(ok && out.contains("readers"), "{out}");
    let (ok, out, _) = cli(a, &["group", "describe", "readers", "--json"], "");
    assert!(ok, "{out}");
    let d: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let lag: u64 = d["lag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(lag, 0, "{out}");
    // A second group read consumes nothing new: the offsets were committed.
    let (ok, out, _) = cli(a, &["consume", "logs", "--group", "readers"], "");
    assert!(ok && out.is_empty(), "{out}");
    let (ok, out, _) = cli(a, &["topic", "describe", "logs", "--json"], "");
    assert!(ok, "{out}");
    // From a file (with a progress bar), 5000 lines, then read back whole and in order per key.
    let file = dir.path().join("input.txt");
    let lines: String = (0..5000).map(|i| format!("line-{i}\n")).collect();
    std::fs::write(&file, lines).unwrap();
    let (ok, _, err) = cli(
        a,
        &[
            "produce",
            "logs",
            "--file",
            file.to_str().unwrap(),
            "--partition",
            "1",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(err.contains("produced 5000 records"), "{err}");
    let (ok, out, err) = cli(
        a,
        &["consume", "logs", "--partition", "1", "--from", "offset:0"],
        "",
    );
    assert!(ok, "{err}");
    let file_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("line-")).collect();
    assert_eq!(file_lines.len(), 5000);
    assert_eq!(file_lines[4999], "line-4999");
    let (ok, _, err) = cli(a, &["topic", "delete", "logs"], "");
    assert!(ok, "{err}");
    let (ok, _, err) = cli(a, &["consume", "logs"], "");
    assert!(
        !ok && err.contains("does not exist") || err.contains("UnknownTopic"),
        "{err}"
    );
    server.stop();
}

#[test]
fn bench_produce_and_both_consume_modes_read_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let a = &server.addr;
    let json = |args: &[&str]| -> serde_json::Value {
        let (ok, out, err) = cli(a, args, "");
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str(out.lines().last().unwrap_or("")).expect(&out)
    };
    let produced = json(&[
        "bench",
        "produce",
        "--topic",
        "b",
        "--messages",
        "5000",
        "--batch",
        "100",
        "--size",
        "200",
        "--output",
        "json",
    ]);
    assert_eq!(produced["messages"], 5000);
    assert!(produced["latency_us"]["p50"].as_u64().unwrap() > 0);
    // One fetch at a time (16 KiB each, so many of them), then through a push subscription
    // with a credit window of the same size: every record, each once.
    for mode in [&[][..], &["--push"][..]] {
        let mut args = vec![
            "bench",
            "consume",
            "--topic",
            "b",
            "--messages",
            "5000",
            "--max-bytes",
            "16384",
            "--output",
            "json",
        ];
        args.extend_from_slice(mode);
        let consumed = json(&args);
        assert_eq!(consumed["messages"], 5000, "{mode:?}: {consumed}");
        assert!(
            consumed["bytes"].as_u64().unwrap() >= 5000 * 200,
            "{mode:?}: {consumed}"
        );
        // Every record decoded: exactly the values' bytes.
        assert_eq!(
            consumed["payload_bytes"],
            5000 * 200,
            "{mode:?}: {consumed}"
        );
        // One latency sample per fetch or per pushed frame. A fetch of 16 KiB returns one
        // whole batch (about 21 KB each, 50 of them); a push frame may carry several.
        let samples = consumed["latency_us"]["count"].as_u64().unwrap();
        let fewest = if mode.is_empty() { 50 } else { 1 };
        assert!(samples >= fewest, "{mode:?}: {consumed}");
    }
    // Through the client's Producer, record by record (one latency sample per record) and in
    // batches handed to it whole (one per batch): every record acknowledged, and all of them
    // there to read back.
    for (topic, mode, samples) in [
        ("r", &["--records"][..], 3000),
        ("w", &["--batch", "300", "--producer"][..], 10),
    ] {
        let mut args = vec!["bench", "produce", "--topic", topic, "--messages", "3000"];
        args.extend_from_slice(mode);
        args.extend_from_slice(&["--size", "100", "--output", "json"]);
        let produced = json(&args);
        assert_eq!(produced["messages"], 3000, "{mode:?}: {produced}");
        assert_eq!(
            produced["latency_us"]["count"], samples,
            "{mode:?}: {produced}"
        );
        assert_eq!(
            produced["payload_bytes"],
            3000 * 100,
            "{mode:?}: {produced}"
        );
        let back = json(&[
            "bench",
            "consume",
            "--topic",
            topic,
            "--messages",
            "1000000",
            "--output",
            "json",
        ]);
        assert_eq!(back["messages"], 3000, "{mode:?}: {back}");
        assert_eq!(back["payload_bytes"], 3000 * 100, "{mode:?}: {back}");
    }
    // The batches given whole are the Producer's: ten of 300 records, each stamped with its
    // producer id (a pre-built batch carries none).
    let stored = common::rt().block_on(async {
        let c = Client::connect(a, "test").await.unwrap();
        let f = c
            .fetch("w", 0, 0, 1 << 20, 0, Duration::ZERO)
            .await
            .unwrap();
        weir_batch::Batches::new(&f.batches)
            .map(|b| {
                let (h, _) = b.unwrap();
                (h.record_count, h.producer_id >= 0)
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(stored, vec![(300, true); 10]);
    server.stop();
}

/// `weir bench sync-floor` (no server): every message makes a synced round trip, the
/// latencies are real, and the file it wrote is gone after.
#[test]
fn the_sync_floor_bench_times_every_round_trip_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out, err) = cli(
        "127.0.0.1:1",
        &[
            "bench",
            "sync-floor",
            "--dir",
            d,
            "--messages",
            "50",
            "--size",
            "100",
            "--output",
            "json",
        ],
        "",
    );
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).expect(&out);
    assert_eq!(r["messages"], 50);
    assert_eq!(r["latency_us"]["count"], 50);
    assert!(r["latency_us"]["p50"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A directory that cannot take the file is a clear error.
    let (ok, _, err) = cli(
        "127.0.0.1:1",
        &["bench", "sync-floor", "--dir", "/nonexistent/dir"],
        "",
    );
    assert!(!ok && err.contains("/nonexistent/dir"), "{err}");
}

#[test]
fn unknown_configuration_refuses_to_boot_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("serve")
        .env("WEIR_DATA_DIR", dir.path())
        .env("WEIR_NATIVE__LISTEN", "127.0.0.1:0")
        .env("WEIR_NATIVE__MAX_CONECTIONS", "5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_conections"), "{err}");
}

#[test]
fn connections_beyond_the_limit_are_refused_and_the_rest_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("WEIR_NATIVE__MAX_CONNECTIONS", "3")]);
    common::rt().block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(Client::connect(&server.addr, "held").await.unwrap());
        }
        match Client::connect(&server.addr, "extra").await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::ConnectionLimit),
            Err(ClientError::Closed) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        held[0].ping().await.unwrap();
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        Client::connect(&server.addr, "again")
            .await
            .unwrap()
            .ping()
            .await
            .unwrap();
    });
}

#[test]
fn a_topic_deleted_and_created_again_starts_empty_and_old_subscriptions_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("reborn", topic(1)).await.unwrap();
        for i in 0..20u32 {
            c.produce("reborn", Some(0), None, batch(&[&i.to_be_bytes()]))
                .await
                .unwrap();
        }
        let mut sub = c
            .subscribe("reborn", 0, Start::Latest, 100, 1 << 20)
            .await
            .unwrap();
        c.delete_topic("reborn").await.unwrap();
        c.create_topic("reborn", topic(1)).await.unwrap();
        let meta = c.metadata(&["reborn"]).await.unwrap();
        assert_eq!(
            meta[0].partitions[0].high_watermark, 0,
            "the new topic starts empty"
        );
        let ack = c
            .produce("reborn", Some(0), None, batch(&[b"fresh"]))
            .await
            .unwrap();
        assert_eq!(ack.base_offset, 0);
        // The old subscription does not continue into the new topic.
        let end = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap();
        match end {
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::UnknownTopic), "{e}"),
            Ok(b) => panic!("old subscription delivered {b:?}"),
        }
    });
    server.stop();
    // And the data stays separate across a restart.
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        let mut consumer = PartitionConsumer::new(c, "reborn", 0, Start::Earliest)
            .await
            .unwrap();
        let recs = consumer.poll(Duration::from_secs(1)).await.unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].value.as_deref(), Some(&b"fresh"[..]));
    });
}

#[test]
fn a_credit_window_smaller_than_a_batch_does_not_stall() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("big", topic(1)).await.unwrap();
        let values: Vec<Vec<u8>> = (0..500u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        c.produce("big", Some(0), None, batch(&refs)).await.unwrap();
        c.produce("big", Some(0), None, batch(&refs)).await.unwrap();
        // A 100-record window, batches of 500: the server says what it needs, the client
        // lends it, and both batches arrive whole.
        let mut sub = c
            .subscribe("big", 0, Start::Earliest, 100, 1 << 20)
            .await
            .unwrap();
        let mut got = 0;
        while got < 1000 {
            let b = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("stalled")
                .unwrap()
                .unwrap();
            assert_eq!(b.records.len(), 500, "batches are never split");
            got += b.records.len();
        }
    });
}

#[test]
fn a_producer_holding_max_queued_records_makes_send_wait_until_a_batch_is_answered() {
    use weir_client::producer::Record;
    use weir_client::{Producer, ProducerConfig};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("q", topic(2)).await.unwrap();
        // Nothing leaves before a flush: every record sent waits in an open batch.
        let producer = Producer::new(
            c,
            ProducerConfig {
                linger: Duration::from_secs(60),
                max_queued: 10,
                ..ProducerConfig::default()
            },
        );
        let mut acks = Vec::new();
        for i in 0..10u32 {
            let r = Record::new("q", format!("v{i}")).partition(i % 2);
            acks.push(producer.send(r).await.unwrap());
        }
        let p = producer.clone();
        let eleventh =
            tokio::spawn(async move { p.send(Record::new("q", "v10").partition(0)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !eleventh.is_finished(),
            "ten records wait: the eleventh send waits too"
        );
        // Sent but not answered (the server is stopped): the places stay taken.
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([sig, &server.pid().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill {sig}");
        };
        signal("-STOP");
        let p = producer.clone();
        let flushed = tokio::spawn(async move { p.flush().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let waiting = !eleventh.is_finished() && !flushed.is_finished();
        signal("-CONT");
        assert!(
            waiting,
            "the batches are under way, unanswered: send still waits"
        );
        flushed.await.unwrap().unwrap();
        // Answered, the batches give back their records' places.
        let ack = tokio::time::timeout(Duration::from_secs(10), eleventh)
            .await
            .expect("send went on once the batches were answered")
            .unwrap()
            .unwrap();
        producer.flush().await.unwrap();
        assert_eq!(ack.await.unwrap().unwrap().offset, Some(5));
        for (i, a) in acks.into_iter().enumerate() {
            assert_eq!(a.await.unwrap().unwrap().offset, Some(i as u64 / 2));
        }
    });
}

#[test]
fn a_producer_bounds_the_bytes_it_holds_and_lets_a_larger_record_go_alone() {
    use weir_client::producer::Record;
    use weir_client::{Producer, ProducerConfig};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("qb", topic(1)).await.unwrap();
        let producer = Producer::new(
            c,
            ProducerConfig {
                linger: Duration::from_secs(60),
                max_queued_bytes: 10_000,
                ..ProducerConfig::default()
            },
        );
        // Nine records of about 1 KiB each wait in an open batch: the tenth would pass 10,000.
        let value = vec![b'v'; 1000];
        for _ in 0..9 {
            producer
                .send(Record::new("qb", value.clone()))
                .await
                .unwrap();
        }
        let p = producer.clone();
        let v = value.clone();
        let tenth = tokio::spawn(async move { p.send(Record::new("qb", v)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !tenth.is_finished(),
            "9,216 bytes wait: a tenth record would pass the bound"
        );
        producer.flush().await.unwrap();
        let tenth = tokio::time::timeout(Duration::from_secs(10), tenth)
            .await
            .expect("send went on once the batch was answered")
            .unwrap()
            .unwrap();
        producer.flush().await.unwrap();
        assert_eq!(tenth.await.unwrap().unwrap().offset, Some(9));
        // A record larger than the whole bound is not refused for ever: alone, it goes.
        let big = tokio::time::timeout(
            Duration::from_secs(10),
            producer.send(Record::new("qb", vec![b'b'; 50_000])),
        )
        .await
        .expect("a record over the bound goes when nothing else waits")
        .unwrap();
        producer.flush().await.unwrap();
        assert_eq!(big.await.unwrap().unwrap().offset, Some(10));
    });
}

#[test]
fn a_batch_given_whole_goes_at_once_in_one_batch_after_the_records_sent_before_it() {
    use weir_client::producer::Record;
    use weir_client::{Producer, ProducerConfig};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("wb", topic(4)).await.unwrap();
        // Records sent one by one wait a minute in their open batch.
        let producer = Producer::new(
            c.clone(),
            ProducerConfig {
                linger: Duration::from_secs(60),
                ..ProducerConfig::default()
            },
        );
        let mut singles = Vec::new();
        for i in 0..3 {
            let r = Record::new("wb", format!("a{i}")).partition(2);
            singles.push(producer.send(r).await.unwrap());
        }
        // A record's own topic and partition are not what routes a batch given whole.
        let mut whole = vec![Record::new("elsewhere", "b0").partition(0)];
        whole.extend((1..5).map(|i| Record::new("wb", format!("b{i}")).key("k")));
        let ack = producer.send_batch("wb", 2, whole).await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .expect("a batch given whole does not wait for the linger")
            .unwrap()
            .unwrap();
        assert_eq!(ack.partition, 2);
        assert_eq!(ack.records, 5);
        assert_eq!(ack.base_offset, Some(3), "after the records sent before it");
        for (i, single) in singles.into_iter().enumerate() {
            let a = single.await.unwrap().unwrap();
            assert_eq!((a.partition, a.offset), (2, Some(i as u64)));
        }
        let fetched = c
            .fetch("wb", 2, 0, 1 << 20, 0, Duration::ZERO)
            .await
            .unwrap();
        let batches: Vec<_> = weir_batch::Batches::new(&fetched.batches)
            .map(|b| b.unwrap())
            .collect();
        let shape: Vec<(i64, i32)> = batches
            .iter()
            .map(|(h, _)| (h.base_offset, h.record_count))
            .collect();
        assert_eq!(
            shape,
            vec![(0, 3), (3, 5)],
            "the five records travel as one batch"
        );
        let values: Vec<String> = batches
            .iter()
            .flat_map(|(_, bytes)| {
                weir_batch::Records::new(bytes)
                    .unwrap()
                    .map(|r| String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(values, ["a0", "a1", "a2", "b0", "b1", "b2", "b3", "b4"]);
        for p in [0, 1, 3] {
            let f = c
                .fetch("wb", p, 0, 1 << 20, 0, Duration::ZERO)
                .await
                .unwrap();
            assert!(f.batches.is_empty(), "nothing went to partition {p}");
        }
        // Nothing to send is refused, not queued.
        let e = producer.send_batch("wb", 2, Vec::new()).await.unwrap_err();
        assert!(matches!(e, weir_client::ClientError::Invalid(_)), "{e:?}");
        // A batch larger than the producer's bounds goes alone rather than never.
        let small = Producer::new(
            c.clone(),
            ProducerConfig {
                max_queued: 4,
                max_queued_bytes: 1000,
                ..ProducerConfig::default()
            },
        );
        let big: Vec<Record> = (0..10)
            .map(|_| Record::new("wb", vec![b'x'; 500]))
            .collect();
        let ack = tokio::time::timeout(Duration::from_secs(10), async {
            small.send_batch("wb", 1, big).await.unwrap().await
        })
        .await
        .expect("a batch over the bounds goes when nothing else waits")
        .unwrap()
        .unwrap();
        assert_eq!(
            (ack.partition, ack.base_offset, ack.records),
            (1, Some(0), 10)
        );
    });
}

#[test]
fn a_request_over_the_servers_frame_limit_is_refused_by_the_client_and_the_connection_goes_on() {
    use weir_client::producer::Record;
    use weir_client::{Producer, ProducerConfig};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("WEIR_NATIVE__MAX_FRAME_BYTES", "65536")]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("fl", topic(1)).await.unwrap();
        // A long poll under way on the same connection: closing it would end this too.
        let mut waiting = Box::pin(c.fetch("fl", 0, 0, 1 << 20, 1, Duration::from_secs(20)));
        // Polled once, it has put its request on the connection, ahead of the next one.
        tokio::select! {
            biased;
            r = &mut waiting => panic!("the long poll answered with nothing there: {r:?}"),
            _ = std::future::ready(()) => {}
        }
        let big = common::batch(&[b"x".repeat(100_000).as_slice()]);
        let e = c.produce("fl", Some(0), None, big).await.unwrap_err();
        assert!(
            matches!(&e, weir_client::ClientError::Invalid(m) if m.contains("frame limit of 65536")),
            "{e:?}"
        );
        c.produce("fl", Some(0), None, common::batch(&[b"small".as_slice()]))
            .await
            .unwrap();
        let fetched = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the long poll answered")
            .expect("the connection stayed up under the long poll");
        assert!(!fetched.batches.is_empty());
        // A producer refuses a record or a batch that cannot fit in a request when it is
        // given, before it takes sequence numbers: the records around it go on, the one sent
        // before it in the same open batch too.
        let producer = Producer::new(
            c.clone(),
            ProducerConfig {
                linger: Duration::from_millis(200),
                ..ProducerConfig::default()
            },
        );
        let before = producer
            .send(Record::new("fl", "a").partition(0))
            .await
            .unwrap();
        let e = producer
            .send(Record::new("fl", vec![b'y'; 70_000]).partition(0))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, weir_client::ClientError::Invalid(m) if m.contains("does not fit")),
            "{e:?}"
        );
        let over: Vec<Record> = (0..100).map(|_| Record::new("fl", vec![b'y'; 1000])).collect();
        let e = producer.send_batch("fl", 0, over).await.unwrap_err();
        assert!(matches!(e, weir_client::ClientError::Invalid(_)), "{e:?}");
        let ok = producer
            .send_batch("fl", 0, vec![Record::new("fl", "z")])
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!((ok.base_offset, ok.records), (Some(2), 1));
        assert_eq!(before.await.unwrap().unwrap().offset, Some(1));
        // Without acknowledgements a batch given whole is answered with no offset.
        let no_ack = Producer::new(
            c.clone(),
            ProducerConfig {
                no_ack: true,
                ..ProducerConfig::default()
            },
        );
        let a = no_ack
            .send_batch("fl", 0, vec![Record::new("fl", "q"), Record::new("fl", "r")])
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.partition, a.base_offset, a.records), (0, None, 2));
    });
}

#[test]
fn the_producer_keeps_per_key_order_and_acknowledges_every_record() {
    use weir_client::producer::Record;
    use weir_client::{Producer, ProducerConfig};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic("events", topic(4)).await.unwrap();
        let producer = Producer::new(
            c.clone(),
            ProducerConfig {
                linger: Duration::from_millis(2),
                batch_bytes: 4096,
                max_queued: 500,
                ..ProducerConfig::default()
            },
        );
        let mut acks = Vec::new();
        for i in 0..5000u32 {
            let key = format!("device-{}", i % 13);
            let value = format!("{key}:{i}");
            let ack = producer
                .send(Record::new("events", value.clone()).key(key.clone()))
                .await
                .unwrap();
            acks.push((key, value, ack));
        }
        producer.flush().await.unwrap();
        let mut placed: BTreeMap<(u32, u64), String> = BTreeMap::new();
        let mut partition_of: BTreeMap<String, u32> = BTreeMap::new();
        for (key, value, ack) in acks {
            let a = ack.await.unwrap().unwrap();
            assert_eq!(
                *partition_of.entry(key).or_insert(a.partition),
                a.partition,
                "a key stays on one partition"
            );
            assert!(
                placed
                    .insert((a.partition, a.offset.unwrap()), value)
                    .is_none(),
                "offset acknowledged twice"
            );
        }
        assert_eq!(placed.len(), 5000);
        for p in 0..4 {
            let mut consumer = PartitionConsumer::new(c.clone(), "events", p, Start::Earliest)
                .await
                .unwrap();
            let mut last_seen: BTreeMap<String, u32> = BTreeMap::new();
            loop {
                let recs = consumer.poll(Duration::from_millis(100)).await.unwrap();
                if recs.is_empty() {
                    break;
                }
                for r in recs {
                    let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                    assert_eq!(
                        placed.get(&(p, r.offset)),
                        Some(&v),
                        "stored where acknowledged"
                    );
                    let (key, n) = v.split_once(':').unwrap();
                    let n: u32 = n.parse().unwrap();
                    if let Some(prev) = last_seen.insert(key.to_string(), n) {
                        assert!(prev < n, "order within a key broken: {prev} then {n}");
                    }
                }
            }
        }
    });
}

/// Well-framed requests with random bodies, for every API key and some beyond: the server
/// answers or closes that connection, never crashes, and keeps serving a well-behaved client.
#[test]
fn random_request_bodies_for_every_api_never_take_the_server_down() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let hello = {
        let mut b = bytes::BytesMut::new();
        let msg = msg::HelloRequest {
            client_id: "fuzz".into(),
            apis: weir_wire::Api::supported(),
        };
        weir_wire::encode_frame(
            weir_wire::FrameHeader {
                api_key: 0,
                api_version: 1,
                correlation_id: 1,
                flags: weir_wire::Flags(0),
            },
            &msg,
            0,
            &mut b,
        );
        b.to_vec()
    };
    for round in 0..200u32 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if round % 4 != 0 {
            s.write_all(&hello).unwrap();
        }
        for i in 0..5u32 {
            let api: u16 = rng.random_range(0..22);
            let flags: u16 = if rng.random_ratio(1, 5) {
                weir_wire::Flags::RECORDS
            } else {
                0
            };
            let body: Vec<u8> = (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect();
            let mut frame = Vec::new();
            frame.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
            frame.extend_from_slice(&api.to_be_bytes());
            frame.extend_from_slice(&1u16.to_be_bytes());
            frame.extend_from_slice(&(i + 2).to_be_bytes());
            frame.extend_from_slice(&flags.to_be_bytes());
            frame.extend_from_slice(&body);
            if s.write_all(&frame).is_err() {
                break;
            }
        }
        let mut sink = [0u8; 4096];
        let _ = s.read(&mut sink);
    }
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "after").await.unwrap();
        c.create_topic("still-up", topic(1)).await.unwrap();
        c.produce("still-up", Some(0), None, batch(&[b"ok"]))
            .await
            .unwrap();
    });
    server.stop();
}
