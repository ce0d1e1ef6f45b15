//! The Kafka listener driven by real Node.js Kafka clients against the real binary: kafkajs, a
//! classic client that sends only pre-flexible API versions, and @platformatic/kafka, a modern
//! one that sends the flexible (KIP-482) versions. `tests/node/kafka_clients.mjs` does the
//! client side and reports in JSON; its opening comment lists the versions each one sends.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::{Server, cli, json_report, names, node, strings};
use serde_json::{Value, json};

fn client(lib: &str, scenario: &str, server: &Server, topic: &str, group: &str) -> Value {
    let mut cmd = Command::new(node());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node/kafka_clients.mjs"
    ))
    .args([lib, scenario, &server.kafka, topic, group]);
    json_report(cmd, &format!("{lib} {scenario}"))
}

/// Produce (idempotent, acks=all), consume from the beginning, a group whose members change
/// mid-stream and a fresh member resuming from its commits, then the admin client.
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
    // Every record acknowledged once, at its own offset: per partition, offsets 0..n without a
    // gap or repeat.
    let mut per_partition: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for pair in produced["offsets"].as_array().unwrap() {
        let (p, o) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap());
        per_partition.entry(p).or_default().push(o);
    }
    assert_eq!(
        per_partition.values().map(Vec::len).sum::<usize>(),
        200,
        "{lib}: {produced}"
    );
    assert_eq!(per_partition.len(), 3, "{lib}: {produced}");
    for offsets in per_partition.values_mut() {
        offsets.sort();
        assert_eq!(*offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    }

    let consumed = client(lib, "consume", &server, "plain", &format!("{lib}-reader"));
    let got = strings(&consumed["values"]);
    assert_eq!(got.len(), 200, "{lib}: exactly what was produced");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), names(lib, 200));

    group(lib, &server);
    admin(lib, &server);
    server.stop();
}

fn group(lib: &str, server: &Server) {
    let group = client(lib, "group", server, "grouped", &format!("{lib}-group"));
    let seen: BTreeSet<String> = strings(&group["seen"]).into_iter().collect();
    assert_eq!(
        seen,
        names("g", 300),
        "{lib}: the members read everything across the change"
    );
    // B read 30 and committed them before it left; the members after it took over from the
    // commits. Had B's partitions restarted from the beginning, those 30 would be read twice.
    // Each record is committed before the next is taken, so a rebalance can put back at most
    // the one record per partition whose commit it fenced: up to three rebalances (B joining
    // A, B leaving, C joining) over three partitions.
    let duplicates = group["duplicates"].as_u64().unwrap();
    assert!(duplicates <= 9, "{lib}: {duplicates} read twice: {group}");
    // Timing: when B leaves, A alone would need seconds more for the records left (it takes
    // 30 ms a record), and C joins within about a second, so C is assigned partitions with
    // records left on them.
    let counts = &group["counts"];
    assert!(
        counts["C"].as_u64().unwrap() > 0,
        "{lib}: the new member read after the change: {counts}"
    );
    // D, a fresh member, starts at the group's commits: all the new records and, of the old
    // ones, at most one per partition whose last commit was fenced.
    let resumed = strings(&group["resumed"]);
    let resumed_set: BTreeSet<String> = resumed.iter().cloned().collect();
    assert!(
        resumed_set.is_superset(&names("r", 50)),
        "{lib}: {resumed:?}"
    );
    let old: Vec<&String> = resumed.iter().filter(|v| v.starts_with("g-")).collect();
    assert!(old.len() <= 3, "{lib}: resumed before the commits: {old:?}");
}

/// What the admin client saw, step by step (`kafka_clients.mjs` admin).
fn admin(lib: &str, server: &Server) {
    let group = format!("{lib}-admin");
    let r = client(lib, "admin", server, "administered", &group);
    assert!(
        strings(&r["topics"]).contains(&"administered".to_string()),
        "{lib}: {r}"
    );
    assert_eq!(r["partitions"], json!([0, 1]), "{lib}: created with 2");

    // While its member ran, the group was listed as a consumer group and described with it.
    let listed = r["groups"].as_array().unwrap();
    assert!(
        listed.contains(&json!({"groupId": group.as_str(), "protocolType": "consumer"})),
        "{lib}: {listed:?}"
    );
    let described = &r["described"];
    assert_eq!(described["groupId"], group.as_str(), "{lib}: {described}");
    assert!(
        described["state"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("stable"),
        "{lib}: {described}"
    );
    assert_eq!(described["protocolType"], "consumer", "{lib}: {described}");
    assert!(
        !described["protocol"].as_str().unwrap().is_empty(),
        "{lib}: an assignor was chosen: {described}"
    );
    let members = described["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{lib}: {described}");
    assert!(
        !members[0]["memberId"].as_str().unwrap().is_empty(),
        "{lib}: {described}"
    );

    // The member committed past the 15 records of each partition; then partition 0 was set
    // to 5.
    assert_eq!(r["committed"], json!([[0, 15], [1, 15]]), "{lib}: {r}");
    assert_eq!(r["afterSet"], json!([[0, 5], [1, 15]]), "{lib}: {r}");
    // kafkajs's resetOffsets(earliest) commits -2 (EARLIEST_OFFSET) for every partition, and
    // Kafka stores it as given: kafkajs's own tests against Kafka expect fetchOffsets to return
    // -2 afterwards. @platformatic/kafka deletes partition 1's commit (OffsetDelete) instead.
    let after_reset = match lib {
        "kafkajs" => json!([[0, -2], [1, -2]]),
        _ => json!([[0, 5]]),
    };
    assert_eq!(r["afterReset"], after_reset, "{lib}: {r}");

    assert_eq!(
        r["partitionsAfterGrow"],
        json!([0, 1, 2, 3]),
        "{lib}: grown to 4"
    );
    // Deleting below offset 7 of partition 0 moved its start there, and nothing else.
    if lib != "kafkajs" {
        // kafkajs's deleteTopicRecords resolves to nothing.
        assert_eq!(
            r["deleted"],
            json!([{"name": "administered", "partitions": [{"partition": 0, "lowWatermark": 7}]}]),
            "{lib}: {r}"
        );
    }
    assert_eq!(
        r["watermarks"],
        json!([
            {"partition": 0, "low": 7, "high": 15},
            {"partition": 1, "low": 0, "high": 15},
            {"partition": 2, "low": 0, "high": 0},
            {"partition": 3, "low": 0, "high": 0},
        ]),
        "{lib}: {r}"
    );

    assert!(r["configs"]["retention.ms"].is_string(), "{lib}: {r}");
    assert_eq!(
        r["configsAfterAlter"]["retention.ms"], "3600000",
        "{lib}: {r}"
    );
    if lib != "kafkajs" {
        // An incremental change leaves the other keys as they were.
        let after = &r["configsAfterIncremental"];
        assert_eq!(after["retention.bytes"], "1048576", "{lib}: {r}");
        assert_eq!(after["retention.ms"], "3600000", "{lib}: {r}");
    }
}

#[test]
fn kafkajs_produces_consumes_balances_a_group_and_administers() {
    exercise("kafkajs");
}

#[test]
fn platformatic_kafka_produces_consumes_balances_a_group_and_administers() {
    exercise("platformatic");
}
