//! The Kafka listener driven by the real Python Kafka clients — kafka-python, aiokafka and
//! confluent-kafka (which bundles its own, newer librdkafka) — against the real binary.
//! `tests/py/kafka_clients.py` does the client side and reports in JSON.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::{Server, cli, json_report, names, python, run, strings};
use serde_json::Value;

fn client(lib: &str, scenario: &str, server: &Server, topic: &str, group: &str) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/kafka_clients.py"
    ))
    .args([lib, scenario, &server.kafka, topic, group]);
    json_report(cmd, &format!("{lib} {scenario}"))
}

/// Produce (idempotent, acks=all), consume from the beginning, and a group of three with one
/// leaving mid-stream, then a fresh member resuming from the commits.
fn exercise(lib: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for topic in ["plain", "grouped"] {
        let (ok, _, err) = cli(
            &server.addr,
            &["topic", "create", topic, "--partitions", "3"],
            "",
        );
        assert!(ok, "{err}");
    }

    let produced = client(lib, "produce", &server, "plain", "");
    // Every record got its own offset: per partition, offsets 0..n without a gap or repeat.
    let mut per_partition: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for pair in produced["offsets"].as_array().unwrap() {
        let (p, o) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap());
        per_partition.entry(p).or_default().push(o);
    }
    assert_eq!(per_partition.values().map(Vec::len).sum::<usize>(), 200);
    for offsets in per_partition.values_mut() {
        offsets.sort();
        assert_eq!(*offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    }

    let consumed = client(lib, "consume", &server, "plain", "");
    let got = strings(&consumed["values"]);
    assert_eq!(got.len(), 200, "{lib}: exactly what was produced");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), names(lib, 200));

    let group = client(lib, "group", &server, "grouped", &format!("{lib}-group"));
    assert_eq!(
        group["third_left"],
        Value::Bool(true),
        "{lib}: third member left"
    );
    let seen: BTreeSet<String> = strings(&group["seen"]).into_iter().collect();
    assert_eq!(
        seen,
        names("g", 300),
        "{lib}: the two members left read everything"
    );
    // The resumed member starts at the group's commits: all the new records, and of the old
    // ones at most the few whose commit a rebalance fenced (at-least-once), never the early ones.
    let resumed = strings(&group["resumed"]);
    let resumed_set: BTreeSet<String> = resumed.iter().cloned().collect();
    assert!(
        resumed_set.is_superset(&names("r", 50)),
        "{lib}: {resumed:?}"
    );
    let old: Vec<&String> = resumed.iter().filter(|v| v.starts_with("g-")).collect();
    assert!(
        old.len() <= 30,
        "{lib}: resumed far before the commits: {old:?}"
    );
    server.stop();
}

#[test]
fn kafka_python_produces_consumes_and_balances_a_group() {
    exercise("kafka-python");
}

#[test]
fn aiokafka_produces_consumes_and_balances_a_group() {
    exercise("aiokafka");
}

#[test]
fn confluent_kafka_produces_consumes_and_balances_a_group() {
    exercise("confluent-kafka");
}

/// A commit past the end of the log (a seek with auto-commit, say) is stored as given, as Kafka
/// does, and a consumer resuming from it resets at its fetch and keeps consuming. Refusing the
/// commit (OFFSET_OUT_OF_RANGE) stopped such consumers for good.
#[test]
fn a_commit_outside_the_log_is_stored_and_a_consumer_resumes_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (ok, _, err) = cli(&server.addr, &["topic", "create", "outside"], "");
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &server.addr,
        &["produce", "outside"],
        "r0\nr1\nr2\nr3\nr4\n",
    );
    assert!(ok, "{err}");
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/kafka_commit_outside.py"
    ))
    .args([&server.kafka, "outside", "resumer"]);
    let (ok, out, err) = run(cmd, "");
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(v["commit_error"], Value::Null, "{v}");
    assert_eq!(v["committed"], 1000, "{v}");
    assert_eq!(strings(&v["read"]), ["r0", "r1", "r2", "r3", "r4"], "{v}");
    server.stop();
}

/// A KIP-848 consumer group (`group.protocol=consumer`, confluent-kafka): the broker assigns;
/// two members share the three partitions and read every record once between them; one
/// leaves, and the other is given all three and reads what follows.
#[test]
fn a_kip_848_consumer_group_shares_partitions_and_hands_them_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (ok, _, err) = cli(
        &server.addr,
        &["topic", "create", "cp", "--partitions", "3"],
        "",
    );
    assert!(ok, "{err}");
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/kafka_consumer_protocol.py"
    ))
    .args([&server.kafka, "cp", "kip848"]);
    let report = json_report(cmd, "kafka_consumer_protocol.py");
    let seen: BTreeSet<String> = strings(&report["seen"]).into_iter().collect();
    assert_eq!(seen, names("a", 300));
    assert_eq!(report["duplicates"], 0);
    let shared: Vec<Vec<u64>> = report["shared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ps| {
            ps.as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap())
                .collect()
        })
        .collect();
    assert!(
        shared.iter().all(|ps| !ps.is_empty()),
        "both members had partitions: {shared:?}"
    );
    let mut all: Vec<u64> = shared.concat();
    all.sort();
    assert_eq!(
        all,
        vec![0, 1, 2],
        "each partition with one member: {shared:?}"
    );
    let after: BTreeSet<String> = strings(&report["after"]).into_iter().collect();
    assert_eq!(after, names("b", 100));
    assert_eq!(report["alone"], serde_json::json!([0, 1, 2]));
}
