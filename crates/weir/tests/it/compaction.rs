//! Compacted topics against the real binary: created and described through Kafka's admin
//! API, written by confluent-kafka, compacted by the server's own cleaner, and read from the
//! start by kcat, kafka-python, aiokafka and confluent-kafka across the offsets compaction
//! left out (`tests/py/kafka_compacted.py`); then restarts, clean and kill -9, in the middle
//! of passes.

use crate::common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, cli, json_report, python, run};
use serde_json::Value;

use common::Rec;

fn script(step: &str, server: &Server, topic: &str, n: usize) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/kafka_compacted.py"
    ))
    .args([step, &server.kafka, topic, &n.to_string()]);
    json_report(cmd, &format!("kafka_compacted.py {step}"))
}

fn recs(v: &Value) -> Vec<Rec> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|r| {
            (
                r[0].as_u64().unwrap(),
                r[1].as_str().unwrap().to_string(),
                r[2].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The partition's size and log start, from `GET /topics/NAME`.
fn partition(server: &Server, topic: &str) -> (u64, u64) {
    let (status, v) = http_get(server, &format!("/topics/{topic}"));
    assert_eq!(status, 200, "{v}");
    let p = &v["partitions"][0];
    (
        p["size_bytes"].as_u64().unwrap(),
        p["log_start_offset"].as_u64().unwrap(),
    )
}

/// One request to the HTTP door (`body`: a JSON body): the status and the JSON answer.
fn http(server: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(&server.http).unwrap();
    let body = body.unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn http_get(server: &Server, path: &str) -> (u16, Value) {
    http(server, "GET", path, None)
}

fn http_post(server: &Server, path: &str, body: &str) -> (u16, Value) {
    http(server, "POST", path, Some(body))
}

/// Lookups by key: the latest value, a deleted key, a key never written.
fn lookups(server: &Server, topic: &str, written: &[Rec]) {
    let latest = written.iter().rev().find(|r| r.1 == "k7").unwrap();
    let (status, v) = http_get(server, &format!("/topics/{topic}/keys/k7"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["offset"], latest.0, "{v}");
    assert_eq!(v["value"].as_str(), latest.2.as_deref(), "{v}");
    let (status, v) = http_get(server, &format!("/topics/{topic}/keys/k3"));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("unknown_key")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("deleted"),
        "{v}"
    );
    let (status, v) = http_get(server, &format!("/topics/{topic}/keys/never"));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("unknown_key")),
        "{v}"
    );
}

/// Waits until kcat reads less than half of the `written` records (the cleaner ran) and the
/// same twice half a second apart (no pass under way), and returns what it read.
fn wait_compacted(server: &Server, topic: &str, written: usize) -> Vec<Rec> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = Vec::new();
    loop {
        let got = kcat_all(server, topic);
        if got.len() < written / 2 && got == before {
            return got;
        }
        before = got.clone();
        assert!(
            Instant::now() < deadline,
            "{topic}: still {} of {written} records",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Everything kcat reads from the start to the end.
fn kcat_all(server: &Server, topic: &str) -> Vec<Rec> {
    let mut cmd = Command::new("kcat");
    cmd.args([
        "-C",
        "-b",
        &server.kafka,
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-Z",
        "-q",
        "-f",
        "%o\t%k\t%s\n",
    ]);
    let (ok, out, err) = run(cmd, "");
    assert!(ok, "kcat: {err}");
    out.lines()
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let o = f.next().unwrap().parse().unwrap();
            let k = f.next().unwrap().to_string();
            let v = f.next().unwrap();
            (o, k, (v != "NULL").then(|| v.to_string()))
        })
        .collect()
}

/// What a reader of a compacted topic must see, given everything written: records as they
/// were written, in offset order, the last record of every key (tombstones may go), and less
/// than everything once compaction ran.
fn check(who: &str, got: &[Rec], written: &[Rec], compacted: bool) {
    let by_offset: HashMap<u64, &Rec> = written.iter().map(|r| (r.0, r)).collect();
    let mut last: HashMap<&str, &Rec> = HashMap::new();
    for r in written {
        last.insert(&r.1, r);
    }
    for pair in got.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{who}: offsets go up: {pair:?}");
    }
    for r in got {
        assert_eq!(by_offset.get(&r.0), Some(&r), "{who}: read {r:?}");
    }
    for (key, r) in &last {
        if r.2.is_some() {
            assert!(
                got.contains(r),
                "{who}: the last value of {key} is missing: {r:?}"
            );
        }
    }
    if compacted {
        assert!(
            got.len() < written.len() / 2,
            "{who}: {} of {} records read: not compacted",
            got.len(),
            written.len()
        );
    }
}

#[test]
fn a_compacted_topic_keeps_the_latest_value_of_each_key_for_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("WEIR_TOPICS__COMPACTION_CHECK_MS", "100")];
    let server = Server::start(dir.path(), &env);
    let created = script("create", &server, "prices", 0);
    let configs = &created["configs"];
    assert_eq!(configs["cleanup.policy"], "compact", "{created}");
    assert_eq!(configs["min.cleanable.dirty.ratio"], "0.01", "{created}");
    assert_eq!(configs["delete.retention.ms"], "0", "{created}");

    let produced = script("produce", &server, "prices", 3000);
    let written = recs(&produced["records"]);
    assert_eq!(written.len(), 3005);
    // librdkafka shows the error code, not the broker's message (which names the key).
    assert_eq!(produced["keyless"][0], "INVALID_RECORD");

    // The cleaner runs by itself: every sealed segment keeps only the latest of 40 keys.
    let from_kcat = wait_compacted(&server, "prices", written.len());
    let size = partition(&server, "prices").0;
    check("kcat", &from_kcat, &written, true);
    let consumed = script("consume", &server, "prices", 0);
    for lib in ["kafka-python", "aiokafka", "confluent-kafka"] {
        check(lib, &recs(&consumed[lib]), &written, true);
        assert_eq!(
            recs(&consumed[lib]),
            from_kcat,
            "{lib} reads what kcat reads"
        );
    }

    lookups(&server, "prices", &written);
    let (status, v) = http_get(&server, "/topics/__nope/keys/k1");
    assert_eq!(status, 404, "{v}");

    // A clean restart keeps the compacted log as it was, and lookups index it again.
    server.stop();
    let server = Server::start(dir.path(), &env);
    assert_eq!(partition(&server, "prices").0, size);
    assert_eq!(kcat_all(&server, "prices"), from_kcat);
    lookups(&server, "prices", &written);
    server.stop();
}

#[test]
fn kill_9_in_the_middle_of_passes_loses_no_latest_value() {
    let dir = tempfile::tempdir().unwrap();
    // Slow passes (64 KiB/s of I/O), so that the kills land in the middle of them.
    let slow = [
        ("WEIR_TOPICS__COMPACTION_CHECK_MS", "50"),
        ("WEIR_TOPICS__COMPACTION_BYTES_PER_SECOND", "65536"),
    ];
    let server = Server::start(dir.path(), &slow);
    script("create", &server, "states", 0);
    let written = recs(&script("produce", &server, "states", 6000)["records"]);
    let mut server = server;
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(300 + 170 * round));
        server.kill9();
        server = Server::start(dir.path(), &slow);
        check(
            &format!("after kill {round}"),
            &kcat_all(&server, "states"),
            &written,
            false,
        );
    }
    server.kill9();
    // At full speed the cleaner finishes the job.
    let server = Server::start(dir.path(), &[("WEIR_TOPICS__COMPACTION_CHECK_MS", "50")]);
    let got = wait_compacted(&server, "states", written.len());
    check("at the end", &got, &written, true);
    server.stop();
}

#[test]
fn the_native_and_http_doors_create_compacted_topics_and_refuse_records_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // The CLI, over the native protocol.
    let (ok, out, err) = cli(
        &server.addr,
        &[
            "topic",
            "create",
            "states",
            "--cleanup-policy",
            "compact",
            "--min-cleanable-dirty-ratio",
            "0.2",
            "--max-compaction-lag-ms",
            "60000",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(out.contains(r#""cleanup_policy":"compact""#), "{out}");
    assert!(out.contains(r#""min_cleanable_dirty_ratio":0.2"#), "{out}");
    assert!(out.contains(r#""max_compaction_lag_ms":60000"#), "{out}");
    let (ok, _, err) = cli(&server.addr, &["produce", "states"], "no key\n");
    assert!(!ok, "a keyless record was taken");
    assert!(err.contains("key"), "{err}");
    let (ok, _, err) = cli(&server.addr, &["produce", "states", "--key", "k"], "v\n");
    assert!(ok, "{err}");
    // A ratio out of range is refused by name.
    let (ok, _, err) = cli(
        &server.addr,
        &[
            "topic",
            "create",
            "bad",
            "--cleanup-policy",
            "compact",
            "--min-cleanable-dirty-ratio",
            "2",
        ],
        "",
    );
    assert!(!ok && err.contains("min_cleanable_dirty_ratio"), "{err}");

    // HTTP.
    let (status, v) = http_post(
        &server,
        "/topics",
        r#"{"name":"prices","cleanup_policy":"compact_delete","delete_retention_ms":5000}"#,
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["config"]["cleanup_policy"], "compact_delete", "{v}");
    assert_eq!(v["config"]["delete_retention_ms"], 5000, "{v}");
    let (status, v) = http_post(
        &server,
        "/topics/prices/records",
        r#"{"records":[{"value":"x"}]}"#,
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_record")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("key"),
        "{v}"
    );
    let (status, v) = http_post(
        &server,
        "/topics/prices/records",
        r#"{"records":[{"key":"AAPL","value":"1"},{"key":"AAPL","value":"2"}]}"#,
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = http_get(&server, "/topics/prices/keys/AAPL");
    assert_eq!((status, v["value"].as_str()), (200, Some("2")), "{v}");
    // Lookups by key are for compacted topics.
    let (status, v) = http_post(&server, "/topics", r#"{"name":"plain"}"#);
    assert_eq!(status, 201, "{v}");
    let (status, v) = http_get(&server, "/topics/plain/keys/k");
    assert_eq!(status, 400, "{v}");
    server.stop();
}

/// One round of writes as one batch: keys `keys`, each to `v{round}-{k}`, or deleted when
/// `delete(k)`. Returns the batch and its records (offsets from 0, to be shifted by the
/// produce's base offset).
fn round_batch(
    round: usize,
    keys: std::ops::Range<usize>,
    delete: impl Fn(usize) -> bool,
) -> (bytes::Bytes, Vec<(String, Option<String>)>) {
    let recs: Vec<(String, Option<String>)> = keys
        .map(|k| {
            let value = (!delete(k)).then(|| format!("v{round}-{k}"));
            (format!("k{k:02}"), value)
        })
        .collect();
    let mut b = weir_batch::BatchBuilder::new(0);
    for (k, v) in &recs {
        b.push(weir_batch::RecordSpec {
            key: Some(k.as_bytes()),
            value: v.as_deref().map(str::as_bytes),
            ..weir_batch::RecordSpec::default()
        });
    }
    (bytes::Bytes::from(b.build()), recs)
}

#[test]
fn a_native_snapshot_subscription_gets_each_keys_latest_value_then_every_live_record() {
    use weir_client::{Client, OverflowPolicy, PushEvent, SubscribeOptions};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("WEIR_TOPICS__COMPACTION_CHECK_MS", "100")]);
    let (status, v) = http_post(
        &server,
        "/topics",
        r#"{"name":"states","cleanup_policy":"compact","segment_bytes":4096,
            "min_cleanable_dirty_ratio":0.01}"#,
    );
    assert_eq!(status, 201, "{v}");
    let rt = common::rt();
    rt.block_on(async {
        let c = Client::connect(&server.addr, "snap").await.unwrap();
        let mut written: Vec<Rec> = Vec::new();
        let produce = |c: Client, round: usize, keys, delete: fn(usize) -> bool| async move {
            let (batch, recs) = round_batch(round, keys, delete);
            let ack = c.produce("states", Some(0), None, batch).await.unwrap();
            recs.into_iter()
                .enumerate()
                .map(|(i, (k, v))| (ack.base_offset + i as u64, k, v))
                .collect::<Vec<Rec>>()
        };
        // 50 keys, 25 rounds, every 7th key deleted in the last; then the cleaner makes gaps.
        for round in 0..25 {
            let delete: fn(usize) -> bool = if round == 24 {
                |k| k % 7 == 0
            } else {
                |_| false
            };
            written.extend(produce(c.clone(), round, 0..50, delete).await);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Writes go on during the snapshot: keys k25..k49 only.
        let during = tokio::spawn({
            let c = c.clone();
            async move {
                let mut out = Vec::new();
                for round in 25..45 {
                    out.extend(produce(c.clone(), round, 25..50, |_| false).await);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                out
            }
        });
        // A small window: the snapshot comes in many credit steps.
        let window = |records, bytes| SubscribeOptions {
            window_records: records,
            window_bytes: bytes,
            ..Default::default()
        };
        let mut sub = c
            .subscribe_snapshot("states", 0, window(7, 4096))
            .await
            .unwrap();
        let mut snapshot = Vec::new();
        let live_from = loop {
            match sub.next_event().await.unwrap().unwrap() {
                PushEvent::Records(b) => snapshot.extend(b.records),
                PushEvent::SnapshotEnd { live_from } => break live_from,
                e => panic!("{e:?}"),
            }
        };
        written.extend(during.await.unwrap());
        let last = written.iter().map(|w| w.0).max().unwrap();
        let mut live = Vec::new();
        while live
            .last()
            .is_none_or(|r: &weir_client::ReceivedRecord| r.offset < last)
        {
            let b = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("live records within 10 s")
                .unwrap()
                .unwrap();
            live.extend(b.records);
        }
        let text =
            |b: &Option<bytes::Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        let recs = |v: &[weir_client::ReceivedRecord]| -> Vec<Rec> {
            v.iter()
                .map(|r| (r.offset, text(&r.key).unwrap(), text(&r.value)))
                .collect()
        };
        assert!(
            written.iter().any(|w| w.0 >= live_from),
            "writes landed after the plan"
        );
        assert!(snapshot.len() > 25, "{}", snapshot.len());
        common::check_snapshot_then_live(&written, live_from, &recs(&snapshot), &recs(&live));

        // A topic that is not compacted has no snapshot.
        let (status, v) = http_post(&server, "/topics", r#"{"name":"plain"}"#);
        assert_eq!(status, 201, "{v}");
        let e = c
            .subscribe_snapshot("plain", 0, window(10, 1 << 20))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not compacted"), "{e}");
        // A queue policy could drop part of the snapshot: refused, saying why.
        for policy in [OverflowPolicy::DropOldest, OverflowPolicy::Disconnect] {
            let opts = SubscribeOptions {
                policy,
                ..Default::default()
            };
            let e = c.subscribe_snapshot("states", 0, opts).await.unwrap_err();
            assert!(e.to_string().contains("CREDIT"), "{policy:?}: {e}");
        }
    });
    server.stop();
}
