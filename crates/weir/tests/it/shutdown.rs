//! A graceful stop under load, through all three front doors at once with real clients: the
//! native Rust client, librdkafka (confluent-kafka) on the Kafka door and reqwest on HTTP.
//! SIGTERM lands while all three produce; the server must exit within its grace period, every
//! record any client saw acknowledged must be on disk, at its acknowledged offset, after a
//! restart, and every request that was not acknowledged must have failed in a way its client
//! retries (never a permanent error such as Kafka's UNKNOWN_SERVER_ERROR).

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, cli, python, run};
use weir_client::{Client, PartitionConsumer, Start};

const GRACE_MS: u64 = 4000;

/// What one door's clients saw: acknowledged records as value → (partition, offset), and the
/// failures that are not retriable.
#[derive(Default)]
struct Seen {
    acked: BTreeMap<String, (u32, u64)>,
    permanent: Vec<String>,
    retriable: usize,
}

#[test]
fn sigterm_under_produce_through_every_door_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let grace = GRACE_MS.to_string();
    let env = [("WEIR_SHUTDOWN_GRACE_MS", grace.as_str())];
    let server = Server::start(dir.path(), &env);
    let (ok, _, err) = cli(
        &server.addr,
        &["topic", "create", "t", "--partitions", "3"],
        "",
    );
    assert!(ok, "{err}");

    // librdkafka in its own process, producing for 4 s: the stop lands in the middle.
    let kafka = {
        let mut cmd = Command::new(python());
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/kafka_produce_through_stop.py"
        ))
        .args([&server.kafka, "t", "4"]);
        std::thread::spawn(move || run(cmd, ""))
    };

    let rt = common::rt();
    let stop = Arc::new(AtomicBool::new(false));
    let native = rt.spawn(native_producers(server.addr.clone(), stop.clone()));
    let http = rt.spawn(http_producers(server.http.clone(), stop.clone()));

    // Let all three get going, then stop the server under them.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = server.pid().to_string();
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut server = server;
    let exited = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(GRACE_MS + 3000),
            "weir still running {:?} after SIGTERM (grace {GRACE_MS} ms)",
            signalled.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    assert!(exited.success(), "weir exited with {exited:?}");
    // The clients keep trying against the stopped server for a moment: those tries must fail
    // retriably too (refused connections).
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let native = rt.block_on(native).unwrap();
    let http = rt.block_on(http).unwrap();
    let (ok, out, err) = kafka.join().unwrap();
    assert!(ok, "the Kafka producer failed:\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let mut kafka = Seen::default();
    for d in report["delivered"].as_array().unwrap() {
        kafka.acked.insert(
            d[2].as_str().unwrap().to_string(),
            (d[0].as_u64().unwrap() as u32, d[1].as_u64().unwrap()),
        );
    }
    for f in report["failed"].as_array().unwrap() {
        // librdkafka retries what the broker calls retriable until the message times out;
        // a final error with a broker's code (>= -1) is one the broker made permanent.
        if f[1].as_i64().unwrap() >= -1 {
            kafka.permanent.push(f.to_string());
        } else {
            kafka.retriable += 1;
        }
    }
    assert_eq!(
        report["unreported"], 0,
        "every Kafka message got its report"
    );

    for (door, seen) in [("native", &native), ("kafka", &kafka), ("http", &http)] {
        eprintln!(
            "{door}: {} acknowledged, {} failed retriably, {} permanently (stopped in {took:?})",
            seen.acked.len(),
            seen.retriable,
            seen.permanent.len()
        );
        assert!(
            seen.acked.len() >= 10,
            "{door}: too few acknowledged records to prove anything"
        );
        assert!(
            seen.permanent.is_empty(),
            "{door}: permanent errors during a graceful stop: {:?}",
            &seen.permanent[..seen.permanent.len().min(5)]
        );
    }

    // Every acknowledged record is there after a restart, at its acknowledged offset.
    let server = Server::start(dir.path(), &env);
    let stored = rt.block_on(read_all(&server.addr, "t", 3));
    for (door, seen) in [("native", &native), ("kafka", &kafka), ("http", &http)] {
        for (value, at) in &seen.acked {
            assert_eq!(
                stored.get(at),
                Some(value),
                "{door}: {value} acknowledged at {at:?}"
            );
        }
    }
    server.stop();
}

/// Four native clients, each producing one record at a time to its partition until `stop`.
async fn native_producers(addr: String, stop: Arc<AtomicBool>) -> Seen {
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let addr = addr.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let client = Client::connect(&addr, "stopper").await.unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let value = format!("native-{t}-{i}");
                i += 1;
                let r = client
                    .produce("t", Some(t % 3), None, common::batch(&[value.as_bytes()]))
                    .await;
                match r {
                    Ok(ack) => {
                        seen.acked.insert(value, (ack.partition, ack.base_offset));
                    }
                    Err(e) => {
                        // Connection-level failures (refused, reset, closed) are retried
                        // by reconnecting; so are the server's retriable codes.
                        let connection = matches!(
                            e,
                            weir_client::ClientError::Connect { .. }
                                | weir_client::ClientError::Io(_)
                                | weir_client::ClientError::Closed
                        );
                        if connection || e.is_retriable() {
                            seen.retriable += 1;
                        } else {
                            seen.permanent.push(format!("{value}: {e}"));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            seen
        }));
    }
    merge(tasks).await
}

/// Four HTTP clients, each posting one record at a time until `stop`.
async fn http_producers(http: String, stop: Arc<AtomicBool>) -> Seen {
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let url = format!("http://{http}/topics/t/records");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let client = reqwest::Client::new();
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let value = format!("http-{t}-{i}");
                i += 1;
                let body = serde_json::json!({"records": [{"value": value, "partition": t % 3}]});
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        let v: serde_json::Value =
                            serde_json::from_str(&resp.text().await.unwrap()).unwrap();
                        let o = &v["offsets"][0];
                        seen.acked.insert(
                            value,
                            (
                                o["partition"].as_u64().unwrap() as u32,
                                o["offset"].as_u64().unwrap(),
                            ),
                        );
                    }
                    // 5xx: the client may retry; 4xx would be a permanent refusal.
                    Ok(resp) if resp.status().is_server_error() => {
                        seen.retriable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        seen.permanent.push(format!("{value}: {status} {text}"));
                    }
                    // Refused, reset or closed before an answer: retried by any HTTP client
                    // that retries at all.
                    Err(_) => {
                        seen.retriable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            seen
        }));
    }
    merge(tasks).await
}

async fn merge(tasks: Vec<tokio::task::JoinHandle<Seen>>) -> Seen {
    let mut all = Seen::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.acked.extend(s.acked);
        all.permanent.extend(s.permanent);
        all.retriable += s.retriable;
    }
    all
}

/// Every record of `topic`, by (partition, offset).
async fn read_all(addr: &str, topic: &str, partitions: u32) -> BTreeMap<(u32, u64), String> {
    let client = Client::connect(addr, "reader").await.unwrap();
    let meta = client.metadata(&[topic]).await.unwrap();
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let end = meta[0].partitions[p as usize].high_watermark;
        let mut consumer = PartitionConsumer::new(client.clone(), topic, p, Start::Earliest)
            .await
            .unwrap();
        let mut next = 0;
        while next < end {
            let records = consumer.poll(Duration::from_secs(2)).await.unwrap();
            assert!(
                !records.is_empty(),
                "partition {p} stops at {next} of {end}"
            );
            for r in records {
                let value = String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();
                out.insert((p, r.offset), value);
                next = r.offset + 1;
            }
        }
    }
    out
}
