//! Kafka's admin tools against the real binary, through confluent-kafka's AdminClient
//! (`tests/py/kafka_admin.py`, one section per test), and consumers whose group commit points
//! outside the log (`tests/py/kafka_commit_cases.py`). Where weir and Kafka 3.9 could differ,
//! the expected value is Kafka's.

use crate::common;

use std::process::Command;

use common::{Server, json_report, python};
use serde_json::{Value, json};

/// Runs a script of `tests/py` with `args`; its last line, as JSON. The script fails (and so
/// the test) when a step that must succeed raised or one that must be refused was not.
fn script(name: &str, args: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR")))
        .args(args);
    json_report(cmd, &format!("{name} {args:?}"))
}

/// One section of the admin script against a fresh server: its steps, the server, and the
/// server's data dir (to be dropped after the server stops).
fn admin(section: &str) -> (Value, Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let v = script("kafka_admin.py", &[&server.kafka, section]);
    (v[section].clone(), server, dir)
}

/// The refusal a step recorded: its error name, having checked that its message names `what`.
fn refusal<'a>(step: &'a Value, what: &str) -> &'a str {
    let message = step["message"].as_str().unwrap_or_default();
    assert!(message.contains(what), "{step} does not name {what:?}");
    step["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not refused: {step}"))
}

#[test]
fn admin_creates_describes_lists_and_grows_topics() {
    let (v, server, _dir) = admin("topics");
    let (host, port) = server.kafka.rsplit_once(':').unwrap();
    let node = json!([[0, host, port.parse::<u16>().unwrap()]]);

    assert_eq!(v["create"], Value::Null, "{v}");
    assert_eq!(v["create_single"], Value::Null, "{v}");
    assert_eq!(v["create_again"]["error"], "TOPIC_ALREADY_EXISTS", "{v}");
    assert_eq!(v["create_compacted"], Value::Null, "{v}");
    assert_eq!(
        refusal(&v["create_bad_policy"], "cleanup.policy"),
        "INVALID_CONFIG"
    );
    assert_eq!(
        refusal(&v["create_unknown_key"], "no.such.config"),
        "INVALID_CONFIG"
    );

    let cluster = &v["describe_cluster"];
    assert_eq!(cluster["controller"], 0, "{v}");
    assert_eq!(cluster["nodes"], node, "{v}");
    assert!(
        !cluster["cluster_id"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{v}"
    );

    // Every partition led by node 0, its only replica, in sync.
    let alone = |p: u32| json!([p, 0, [0], [0]]);
    assert_eq!(
        v["describe_topics"],
        json!({"adm-topic": [alone(0), alone(1), alone(2)], "adm-single": [alone(0)]}),
    );
    assert_eq!(
        v["describe_missing_topic"]["error"], "UNKNOWN_TOPIC_OR_PART",
        "{v}"
    );
    assert_eq!(
        v["list_topics"],
        json!({"topics": {"adm-topic": 3, "adm-single": 1, "adm-compacted": 1}, "brokers": node}),
    );

    assert_eq!(v["grow_partitions"], Value::Null, "{v}");
    assert_eq!(v["grown"], 5, "{v}");
    assert_eq!(v["shrink_partitions"]["error"], "INVALID_PARTITIONS", "{v}");
    assert_eq!(
        v["after_shrink"], 5,
        "a refused shrink changes nothing: {v}"
    );
    assert_eq!(
        v["new_partition_end"], 1,
        "a new partition takes records: {v}"
    );
    server.stop();
}

#[test]
fn admin_lists_describes_resets_and_deletes_a_consumer_group() {
    let (v, server, _dir) = admin("groups");
    let committed = |offsets: &[(u32, u64)]| {
        json!(
            offsets
                .iter()
                .map(|(p, o)| json!(["adm-grouped", p, o]))
                .collect::<Vec<_>>()
        )
    };

    assert_eq!(v["first_member_read"], 30, "{v}");
    assert_eq!(
        v["offsets_after_first"],
        committed(&[(0, 10), (1, 10), (2, 10)])
    );
    assert_eq!(v["listed_after_first"][0][1], "EMPTY", "{v}");
    assert_eq!(v["listed_empty_filter"], v["listed_after_first"], "{v}");
    assert_eq!(v["listed_stable_filter"], json!([]), "{v}");
    let empty = &v["described_after_first"];
    assert_eq!(empty["state"], "EMPTY", "{v}");
    assert_eq!(empty["members"], json!([]), "{v}");
    assert_eq!(empty["coordinator"], 0, "{v}");

    // While a member runs: it shows with its assignment, and the admin may not delete the
    // group, rewrite its offsets, or drop a commit of a topic it subscribes to.
    assert_eq!(v["member_assigned"], true, "{v}");
    let active = &v["described_active"];
    assert_eq!(active["state"], "STABLE", "{v}");
    assert_eq!(active["assignor"], "range", "{v}");
    assert_eq!(active["simple"], false, "{v}");
    let members = active["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{v}");
    assert_eq!(members[0]["client_id"], "adm-member", "{v}");
    assert_eq!(
        members[0]["assignment"],
        json!([["adm-grouped", 0], ["adm-grouped", 1], ["adm-grouped", 2]]),
    );
    assert_eq!(
        v["listed_active"],
        json!([["adm-group", "STABLE", false]]),
        "{v}"
    );
    assert_eq!(v["delete_active"]["error"], "NON_EMPTY_GROUP", "{v}");
    assert_eq!(v["alter_active"]["error"], "UNKNOWN_MEMBER_ID", "{v}");
    assert_eq!(
        v["offset_delete_active"],
        json!({"adm-grouped-2": "GroupSubscribedToTopicError"}),
    );

    assert_eq!(v["member_left"], true, "{v}");
    assert_eq!(v["described_after_leave"]["state"], "EMPTY", "{v}");
    assert_eq!(v["described_after_leave"]["members"], json!([]), "{v}");
    assert_eq!(v["offsets_after_leave"], v["offsets_after_first"], "{v}");

    // Reset while empty: partition 0 to its earliest offset, 1 to offset 5; partition 2's
    // commit deleted. A member then resumes exactly there, partition 2 from its reset policy.
    assert_eq!(v["earliest_p0"], 0, "{v}");
    assert_eq!(v["alter"], json!([[0, 0, null], [1, 5, null]]), "{v}");
    assert_eq!(
        v["offsets_after_alter"],
        committed(&[(0, 0), (1, 5), (2, 10)])
    );
    assert_eq!(
        v["offset_delete"],
        json!({"adm-grouped-2": "NoError"}),
        "{v}"
    );
    assert_eq!(
        v["offsets_after_offset_delete"],
        committed(&[(0, 0), (1, 5)])
    );
    let mut expected: Vec<String> = (0..10).map(|i| format!("p0-{i}")).collect();
    expected.extend((5..10).map(|i| format!("p1-{i}")));
    expected.extend((0..10).map(|i| format!("p2-{i}")));
    assert_eq!(v["resumed"], json!(expected), "{v}");

    assert_eq!(v["delete"], Value::Null, "{v}");
    assert_eq!(v["listed_after_delete"], json!([]), "{v}");
    assert_eq!(v["offsets_after_delete"], json!([]), "{v}");
    assert_eq!(v["delete_again"]["error"], "GROUP_ID_NOT_FOUND", "{v}");

    // As Kafka shows them: a consumer group that emptied keeps its protocol type, so it is not
    // a "simple" (commit-only) group; a member's host is its client's address.
    assert_eq!(
        v["listed_after_first"],
        json!([["adm-group", "EMPTY", false]]),
        "an emptied consumer group listed as a simple group"
    );
    assert_eq!(
        empty["simple"], false,
        "an emptied consumer group described as a simple group"
    );
    assert_eq!(
        members[0]["host"], "/127.0.0.1",
        "DescribeGroups member host"
    );
    server.stop();
}

#[test]
fn admin_lists_offsets_by_time_and_deletes_records() {
    // Offsets 0..9 stamped BASE + i s, except offset 2 (BASE + 50 s) and 6 (BASE + 100 s).
    const BASE: i64 = 1_700_000_000_000;
    let (v, server, _dir) = admin("offsets");
    let stamp = |o: i64| match o {
        2 => BASE + 50_000,
        6 => BASE + 100_000,
        o => BASE + o * 1000,
    };
    let record = |o: i64| json!([o, stamp(o)]);
    let none = json!([-1, -1]);

    assert_eq!(v["before_earliest"], json!([0, -1]), "{v}");
    assert_eq!(v["before_latest"], json!([10, -1]), "{v}");
    assert_eq!(v["before_max_timestamp"], record(6), "{v}");
    // By time: the first record, in offset order, stamped at or after the time.
    assert_eq!(v["before_at_base"], record(0), "{v}");
    assert_eq!(v["before_at_2500"], record(2), "{v}");
    assert_eq!(v["before_at_40000"], record(2), "{v}");
    assert_eq!(v["before_at_after_all"], none, "{v}");

    assert_eq!(v["delete_records"], 4, "{v}");
    assert_eq!(v["after_earliest"], json!([4, -1]), "{v}");
    assert_eq!(v["after_latest"], json!([10, -1]), "{v}");
    assert_eq!(v["after_max_timestamp"], record(6), "{v}");
    assert_eq!(v["after_at_after_all"], none, "{v}");
    assert_eq!(
        v["read_from_beginning"],
        json!(["s4", "s5", "s6", "s7", "s8", "s9"]),
        "a consumer from the beginning starts at the new log start"
    );
    assert_eq!(
        v["delete_records_past_end"]["error"], "OFFSET_OUT_OF_RANGE",
        "{v}"
    );
    assert_eq!(
        v["delete_records_behind_start"], 4,
        "the log start never moves back: {v}"
    );

    // After DeleteRecords, only records from the log start count (Kafka searches from it):
    // the answer is such a record, with its own timestamp.
    assert_eq!(
        v["after_at_base"],
        record(4),
        "ListOffsets by time after DeleteRecords"
    );
    assert_eq!(
        v["after_at_2500"],
        record(4),
        "ListOffsets by time after DeleteRecords"
    );
    assert_eq!(
        v["after_at_40000"],
        record(6),
        "ListOffsets by time after DeleteRecords"
    );
    server.stop();
}

#[test]
fn admin_describes_and_alters_topic_configs() {
    let (v, server, _dir) = admin("configs");
    let entry = |step: &str, name: &str| v[step][name].clone();
    let set =
        |value: &str| json!({"value": value, "source": "DYNAMIC_TOPIC_CONFIG", "read_only": false});
    let default =
        |value: &str| json!({"value": value, "source": "DEFAULT_CONFIG", "read_only": false});

    let created = v["described_created"].as_object().unwrap();
    assert_eq!(
        created.keys().collect::<Vec<_>>(),
        [
            "cleanup.policy",
            "delete.retention.ms",
            "max.compaction.lag.ms",
            "max.message.bytes",
            "message.timestamp.type",
            "min.cleanable.dirty.ratio",
            "min.compaction.lag.ms",
            "retention.bytes",
            "retention.ms",
            "segment.bytes"
        ],
    );
    assert_eq!(entry("described_created", "retention.ms"), set("3600000"));
    assert_eq!(
        entry("described_created", "cleanup.policy"),
        default("delete")
    );
    assert_eq!(
        entry("described_created", "segment.bytes")["read_only"],
        true,
        "{v}"
    );

    assert_eq!(v["set_retention"], Value::Null, "{v}");
    assert_eq!(entry("described_set", "retention.ms"), set("7200000"));

    assert_eq!(
        refusal(&v["set_unknown"], "no.such.config"),
        "INVALID_CONFIG"
    );
    assert_eq!(refusal(&v["set_mixed"], "no.such.config"), "INVALID_CONFIG");
    assert_eq!(
        refusal(&v["set_segment_bytes"], "segment"),
        "INVALID_CONFIG"
    );
    assert_eq!(
        refusal(&v["set_bad_value"], "retention.ms"),
        "INVALID_CONFIG"
    );
    // A refused request changed nothing, not even the valid key it carried.
    assert_eq!(entry("described_refusals", "retention.ms"), set("7200000"));
    assert_eq!(
        entry("described_refusals", "segment.bytes"),
        entry("described_created", "segment.bytes"),
    );
    assert_eq!(v["set_timestamp_type"], Value::Null, "{v}");
    assert_eq!(
        entry("described_refusals", "message.timestamp.type"),
        set("LogAppendTime")
    );

    assert_eq!(v["delete_retention"], Value::Null, "{v}");
    assert_eq!(
        entry("described_deleted", "retention.ms"),
        default("604800000")
    );

    // The legacy AlterConfigs replaces a topic's whole set: what it leaves out is reset.
    assert_eq!(v["legacy_max_message"], Value::Null, "{v}");
    assert_eq!(
        entry("described_legacy_max_message", "max.message.bytes"),
        set("2000000")
    );
    assert_eq!(
        entry("described_legacy_max_message", "message.timestamp.type"),
        default("CreateTime")
    );
    assert_eq!(v["legacy_retention"], Value::Null, "{v}");
    assert_eq!(
        entry("described_legacy_retention", "retention.ms"),
        set("5000000")
    );
    assert_eq!(
        entry("described_legacy_retention", "max.message.bytes"),
        entry("described_created", "max.message.bytes"),
    );
    assert_eq!(
        refusal(&v["legacy_unknown"], "no.such.config"),
        "INVALID_CONFIG"
    );

    let broker = v["broker_config_names"].as_array().unwrap();
    for name in ["log.retention.ms", "num.partitions"] {
        assert!(broker.contains(&json!(name)), "broker 0 lacks {name}: {v}");
    }
    server.stop();
}

/// A group commit outside the log — past its end (a seek with auto-commit, an explicit
/// commit) or behind its start (DeleteRecords passed it) — does not stop a consumer: its fetch
/// is refused, it resets to the earliest offset and keeps reading what is produced. With
/// librdkafka and with kafka-python, which reset separately.
#[test]
fn consumers_keep_consuming_when_their_commit_is_outside_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let v = script("kafka_commit_cases.py", &[&server.kafka, "cases"]);
    let a: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
    for lib in ["confluent-kafka", "kafka-python"] {
        let seek = &v["seek"][lib];
        assert_eq!(seek["first"], json!(a), "{lib}: {v}");
        assert_eq!(
            seek["after_seek"],
            json!(a),
            "{lib}: reset to the start: {v}"
        );
        assert_eq!(seek["kept"], json!(["n0", "n1"]), "{lib}: {v}");
        assert_eq!(seek["committed"], 1000, "{lib}: {v}");
        let mut all = a.clone();
        all.extend(["n0".to_string(), "n1".to_string()]);
        assert_eq!(seek["resumed"], json!(all), "{lib}: {v}");
        assert_eq!(seek["resumed_more"], json!(["m0", "m1"]), "{lib}: {v}");

        let beyond = &v["beyond"][lib];
        assert_eq!(beyond["committed"], 1000, "{lib}: {v}");
        assert_eq!(beyond["resumed"], json!(a), "{lib}: {v}");
        assert_eq!(beyond["resumed_more"], json!(["n0", "n1"]), "{lib}: {v}");

        let retention = &v["retention"][lib];
        assert_eq!(retention["committed"], 3, "{lib}: {v}");
        assert_eq!(retention["log_start"], 8, "{lib}: {v}");
        assert_eq!(retention["resumed"], json!(["a8", "a9"]), "{lib}: {v}");
        assert_eq!(retention["resumed_more"], json!(["n0", "n1"]), "{lib}: {v}");
    }
    server.stop();
}
