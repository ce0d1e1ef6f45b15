//! The Kafka listener, driven by the real `kcat` (librdkafka) against the real binary.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{Server, batch, cli, run};
use weir_client::{Client, PartitionConsumer, Start};

/// Runs the real `kcat` (installed by scripts/test).
fn kcat(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new("kcat");
    cmd.args(args);
    run(cmd, stdin)
}

/// GET `path` from the HTTP API; the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    body.to_string()
}

#[test]
fn kcat_produces_and_consumes_with_every_codec_and_sees_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (ok, _, err) = cli(
        &server.addr,
        &["topic", "create", "k", "--partitions", "2"],
        "",
    );
    assert!(ok, "{err}");
    let b = server.kafka.as_str();
    let mut expected = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let lines: Vec<String> = (0..50).map(|i| format!("{codec}-{i}")).collect();
        let input = lines.join("\n") + "\n";
        let (ok, _, err) = kcat(&["-b", b, "-t", "k", "-P", "-p", "0", "-z", codec], &input);
        assert!(ok, "kcat -P -z {codec}: {err}");
        expected.extend(lines);
    }
    let (ok, out, err) = kcat(
        &["-b", b, "-t", "k", "-C", "-p", "0", "-o", "beginning", "-e"],
        "",
    );
    assert!(ok, "{err}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, expected.iter().map(String::as_str).collect::<Vec<_>>());
    // The same compressed batches read through the other doors: the native client (the CLI)
    // and the HTTP API decompress them.
    let (ok, out, err) = cli(
        &server.addr,
        &["consume", "k", "--partition", "0", "--from", "beginning"],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let mut values = Vec::new();
    while values.len() < expected.len() {
        let body = http_get(
            &server.http,
            &format!("/topics/k/partitions/0/records?offset={}", values.len()),
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
        let records = v["records"].as_array().expect(&body);
        assert!(
            !records.is_empty(),
            "no records at {}: {body}",
            values.len()
        );
        values.extend(
            records
                .iter()
                .map(|r| r["value"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(values, expected);
    // A small max_bytes stops inside a compressed batch (the gzip one holds offsets 50..100),
    // and next_offset says where to go on.
    let body = http_get(
        &server.http,
        "/topics/k/partitions/0/records?offset=50&max_bytes=20",
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
    let n = v["records"].as_array().expect(&body).len();
    assert!((1..50).contains(&n), "{body}");
    assert_eq!(v["next_offset"], 50 + n as u64, "{body}");
    assert_eq!(v["records"][0]["value"], "gzip-0", "{body}");
    let (ok, out, err) = kcat(&["-b", b, "-L"], "");
    assert!(ok, "{err}");
    assert!(out.contains("topic \"k\" with 2 partitions"), "{out}");
    // Keyed records through Kafka land on a partition and keep their keys.
    let (ok, _, err) = kcat(
        &["-b", b, "-t", "k", "-P", "-p", "1", "-K", ":"],
        "user1:hello\nuser2:world\n",
    );
    assert!(ok, "{err}");
    let (ok, out, _) = kcat(
        &[
            "-b",
            b,
            "-t",
            "k",
            "-C",
            "-p",
            "1",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k=%s\n",
        ],
        "",
    );
    assert!(ok);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["user1=hello", "user2=world"]
    );
    server.stop();
}

#[test]
fn records_cross_between_kafka_and_the_native_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let rt = common::rt();
    rt.block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.create_topic(
            "x",
            weir_client::messages::TopicConfig {
                partitions: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Native in, Kafka out.
        c.produce(
            "x",
            Some(0),
            None,
            batch(&[b"from-native-1", b"from-native-2"]),
        )
        .await
        .unwrap();
    });
    let (ok, _, err) = kcat(
        &["-b", &server.kafka, "-t", "x", "-P", "-p", "0"],
        "from-kafka\n",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = kcat(
        &[
            "-b",
            &server.kafka,
            "-t",
            "x",
            "-C",
            "-o",
            "beginning",
            "-e",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["from-native-1", "from-native-2", "from-kafka"]
    );
    // Kafka in, native out.
    rt.block_on(async {
        let c = Client::connect(&server.addr, "test").await.unwrap();
        let mut consumer = PartitionConsumer::new(c, "x", 0, Start::Earliest)
            .await
            .unwrap();
        let values: Vec<Vec<u8>> = consumer
            .poll(Duration::from_secs(1))
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.value.unwrap().to_vec())
            .collect();
        assert_eq!(
            values,
            vec![
                b"from-native-1".to_vec(),
                b"from-native-2".to_vec(),
                b"from-kafka".to_vec()
            ]
        );
    });
    server.stop();
}

#[test]
fn batches_weir_compresses_are_read_by_librdkafka_with_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (ok, _, err) = cli(
        &server.addr,
        &["topic", "create", "z", "--partitions", "1"],
        "",
    );
    assert!(ok, "{err}");
    let mut expected = Vec::new();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let lines: Vec<String> = (0..40).map(|i| format!("{codec} record {i}")).collect();
        let (ok, _, err) = cli(
            &server.addr,
            &["produce", "z", "--compression", codec],
            &(lines.join("\n") + "\n"),
        );
        assert!(ok, "weir produce --compression {codec}: {err}");
        expected.extend(lines);
    }
    // librdkafka (kcat) checks each batch's CRC and decompresses it itself.
    let (ok, out, err) = kcat(
        &[
            "-b",
            &server.kafka,
            "-t",
            "z",
            "-C",
            "-o",
            "beginning",
            "-e",
            "-X",
            "check.crcs=true",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let (ok, _, err) = cli(
        &server.addr,
        &["produce", "z", "--compression", "brotli"],
        "x\n",
    );
    assert!(!ok && err.contains("not a codec"), "{err}");
    server.stop();
}

#[test]
fn unsupported_api_versions_get_a_v0_answer_and_garbage_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // ApiVersions v99: a strict v0 body with error 35 (UNSUPPORTED_VERSION) and our ranges.
    let mut s = TcpStream::connect(&server.kafka).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = Vec::new();
    req.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    req.extend_from_slice(&99i16.to_be_bytes());
    req.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    req.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    let mut framed = (req.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&req);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    assert_eq!(
        i32::from_be_bytes(body[0..4].try_into().unwrap()),
        7,
        "correlation id"
    );
    assert_eq!(
        i16::from_be_bytes(body[4..6].try_into().unwrap()),
        35,
        "UNSUPPORTED_VERSION"
    );
    let keys = i32::from_be_bytes(body[6..10].try_into().unwrap());
    assert!(keys >= 5, "the supported ranges follow");

    // Garbage: the connection is closed, the listener keeps serving.
    let mut g = TcpStream::connect(&server.kafka).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.write_all(&[0, 0, 0, 6, 0x7f, 0x7f, 1, 2, 3, 4]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(g.read(&mut buf).unwrap_or(0), 0, "closed");
    // An operator can see it: counted by reason (0x7f7f is no API key).
    let metrics = http_get(&server.http, "/metrics");
    assert!(
        metrics.contains("weir_kafka_refused_requests_total{reason=\"unknown_api\"} 1"),
        "{metrics}"
    );
    let mut huge = TcpStream::connect(&server.kafka).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    huge.write_all(&0x7fff_ffffi32.to_be_bytes()).unwrap();
    assert_eq!(
        huge.read(&mut buf).unwrap_or(0),
        0,
        "an oversized request is refused, not allocated"
    );
    let (ok, out, err) = kcat(&["-b", &server.kafka, "-L"], "");
    assert!(ok, "{err}");
    assert!(out.contains("1 brokers"), "{out}");
    server.stop();
}

#[test]
fn kcat_consumer_group_commits_and_resumes_and_owns_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let b = server.kafka.as_str();
    let (ok, _, err) = cli(
        &server.addr,
        &["topic", "create", "g3", "--partitions", "3"],
        "",
    );
    assert!(ok, "{err}");
    let first: Vec<String> = (0..90).map(|i| format!("m{i}")).collect();
    let (ok, _, err) = kcat(&["-b", b, "-t", "g3", "-P"], &(first.join("\n") + "\n"));
    assert!(ok, "{err}");
    // A balanced consumer (JoinGroup, SyncGroup, Heartbeat, OffsetFetch, OffsetCommit,
    // LeaveGroup) reads everything, commits on close.
    let group_read = || {
        let (ok, out, err) = kcat(
            &[
                "-b",
                b,
                "-G",
                "kg",
                "-X",
                "auto.offset.reset=earliest",
                "-e",
                "g3",
            ],
            "",
        );
        assert!(ok, "kcat -G: {err}");
        let mut got: Vec<String> = out.lines().map(str::to_string).collect();
        got.sort();
        got
    };
    let mut want = first.clone();
    want.sort();
    assert_eq!(group_read(), want);
    // The committed offsets are the broker's: the native CLI sees them, lag 0.
    let (ok, out, err) = cli(&server.addr, &["group", "describe", "kg"], "");
    assert!(ok, "{err}");
    assert!(out.contains("g3"), "{out}");
    // A native member cannot take the Kafka group's name while kcat is in it... and once it
    // left, the second run resumes after the commit: only the new records.
    let more: Vec<String> = (0..30).map(|i| format!("n{i}")).collect();
    let (ok, _, err) = kcat(&["-b", b, "-t", "g3", "-P"], &(more.join("\n") + "\n"));
    assert!(ok, "{err}");
    let mut want = more.clone();
    want.sort();
    assert_eq!(group_read(), want);

    // While a Kafka consumer is in its group, the native admin view shows it: its member and
    // the partitions its assignor gave it, read from the group's consumer protocol.
    let mut live = std::process::Command::new("kcat")
        .args([
            "-b",
            b,
            "-G",
            "kg",
            "-X",
            "auto.offset.reset=earliest",
            "g3",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let described = loop {
        let (ok, out, err) = cli(&server.addr, &["group", "describe", "kg", "--json"], "");
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let parts: Vec<u64> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["assignment"].as_array().unwrap().clone())
            .filter(|a| a["topic"] == "g3")
            .flat_map(|a| a["partitions"].as_array().unwrap().clone())
            .map(|p| p.as_u64().unwrap())
            .collect();
        if parts.len() == 3 {
            break v;
        }
        if std::time::Instant::now() > deadline {
            let _ = live.kill();
            panic!("the Kafka member never showed: {v}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = live.kill();
    let _ = live.wait();
    assert_eq!(
        described["members"].as_array().unwrap().len(),
        1,
        "{described}"
    );
    server.stop();
}
