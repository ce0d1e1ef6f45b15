"""Kafka admin tools against weir, through confluent-kafka's AdminClient (librdkafka).

Usage: kafka_admin.py BOOTSTRAP [SECTION...]

Sections (all of them when none is named), each on its own topics and group:
- topics: CreateTopics (with configs; refusals), DescribeCluster, describe and list topics
  (Metadata), CreatePartitions (3 -> 5, then 4 refused) and a record in a new partition.
- groups: a group consumes and commits, then ListGroups, DescribeGroups (Empty, then with a
  member running in a thread), DeleteGroups, OffsetCommit and OffsetDelete from the admin
  refused while it runs, OffsetFetch, OffsetCommit (reset to earliest, to an offset), OffsetDelete,
  a member resuming from there, DeleteGroups once empty.
- offsets: ListOffsets (earliest, latest, max timestamp, by timestamp) before and after
  DeleteRecords, and a consumer reading from the beginning after it.
- configs: DescribeConfigs, IncrementalAlterConfigs (set, refused keys, delete), AlterConfigs
  (legacy, replaces the whole set).

confluent-kafka's AdminClient has no OffsetDelete (librdkafka does; the Python binding does not
expose it), so that one step goes through kafka-python's admin client.

Prints one JSON line: per step what the client returned, an error as {"error": NAME, "message":
TEXT}. The test asserts the values; this script exits 1 when a step that must succeed raised,
when one that must be refused was not, or when the whole run passed its deadline.
"""

import json
import os
import sys
import threading
import time
import warnings

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

BOOTSTRAP = sys.argv[1]
SECTIONS = sys.argv[2:] or ["topics", "groups", "offsets", "configs"]
DEADLINE = 90.0
WAIT = 15  # seconds for any one admin answer
# Fast group rounds, so a member joins and leaves within a second or so.
MEMBER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 300}

results = {}  # section -> step -> value
report = {}  # the steps of the running section
section = ""
failures = []
lock = threading.Lock()


def finish(code):
    with lock:
        print(json.dumps({**results, "failures": failures}, sort_keys=True), flush=True)
    # os._exit: a member thread or librdkafka's own threads must not hold the exit up.
    os._exit(code)


def on_deadline():
    with lock:
        failures.append(f"not done within {DEADLINE} s")
    finish(1)


def err(e):
    k = e.args[0]
    return {"error": k.name(), "message": k.str()}


def ok(step, f):
    """Runs `f`, a step that must succeed; records its value, or what it raised."""
    try:
        v = f()
    except KafkaException as e:
        v = err(e)
        failures.append(f"{section}.{step}: {v}")
    except Exception as e:  # noqa: BLE001 - a timeout or a client bug: the run failed
        v = {"error": type(e).__name__, "message": str(e)}
        failures.append(f"{section}.{step}: {v}")
    report[step] = v
    return v


def refused(step, f):
    """Runs `f`, a step the broker must refuse; records the refusal."""
    try:
        v = f()
        failures.append(f"{section}.{step}: not refused: {v}")
    except KafkaException as e:
        v = err(e)
    except Exception as e:  # noqa: BLE001 - not a refusal: the run failed
        v = {"error": type(e).__name__, "message": str(e)}
        failures.append(f"{section}.{step}: {v}")
    report[step] = v
    return v


def must(cond, why):
    if not cond:
        raise RuntimeError(why)
    return True


def one(futures):
    """The value of the single future of an admin call's {key: future}."""
    (f,) = futures.values()
    return f.result(WAIT)


admin = AdminClient({"bootstrap.servers": BOOTSTRAP})


def create(name, partitions, config=None):
    topic = NewTopic(name, partitions, config=config or {})
    return one(admin.create_topics([topic], request_timeout=WAIT))


def produce(topic, records):
    """records: (partition, value, timestamp or None); waits for every acknowledgement."""
    p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    failed = []
    for part, value, ts in records:
        kw = {"timestamp": ts} if ts is not None else {}
        p.produce(
            topic,
            value=value.encode(),
            partition=part,
            on_delivery=lambda e, _m: e and failed.append(e.name()),
            **kw,
        )
    left = p.flush(WAIT)
    if left or failed:
        raise RuntimeError(f"{left} records not acknowledged, errors {failed}")


def consume(conf, topics=None, assign=None, want=0, commit=False):
    """Reads with a fresh consumer until `want` records arrived (or WAIT passed), then reads
    on for half a second more, so that a record too many would show. Returns the values read,
    in order; commits them if asked."""
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "enable.auto.commit": False, **MEMBER, **conf})
    if topics:
        c.subscribe(topics)
    else:
        c.assign(assign)
    seen = []
    deadline = time.monotonic() + WAIT
    extra = None
    while time.monotonic() < (extra or deadline):
        m = c.poll(0.1)
        if m is not None:
            if m.error():
                raise KafkaException(m.error())
            seen.append(m.value().decode())
        if extra is None and len(seen) >= want:
            extra = time.monotonic() + 0.5
    if commit:
        c.commit(asynchronous=False)
    c.close()
    return seen


def group_offsets(group):
    r = one(
        admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=WAIT
        )
    )
    return sorted([tp.topic, tp.partition, tp.offset] for tp in r.topic_partitions)


def listed_groups(**kw):
    r = admin.list_consumer_groups(request_timeout=WAIT, **kw).result(WAIT)
    if r.errors:
        raise r.errors[0]
    return sorted([g.group_id, g.state.name, g.is_simple_consumer_group] for g in r.valid)


def described_group(group):
    d = one(admin.describe_consumer_groups([group], request_timeout=WAIT))
    return {
        "state": d.state.name,
        "simple": d.is_simple_consumer_group,
        "assignor": d.partition_assignor,
        "coordinator": d.coordinator.id,
        "members": [
            {
                "client_id": m.client_id,
                "host": m.host,
                "assignment": sorted(
                    [tp.topic, tp.partition] for tp in m.assignment.topic_partitions
                ),
            }
            for m in d.members
        ],
    }


def list_offset(topic, part, spec):
    tp = TopicPartition(topic, part)
    r = admin.list_offsets({tp: spec}, request_timeout=WAIT)[tp].result(WAIT)
    return [r.offset, r.timestamp]


# --- topics -------------------------------------------------------------------------------


def section_topics():
    ok(
        "create",
        lambda: create("adm-topic", 3, {"retention.ms": "3600000", "cleanup.policy": "delete"}),
    )
    ok("create_single", lambda: create("adm-single", 1))
    refused("create_again", lambda: create("adm-topic", 3))
    ok(
        "create_compacted",
        lambda: create("adm-compacted", 1, {"cleanup.policy": "compact", "delete.retention.ms": "1000"}),
    )
    refused("create_bad_policy", lambda: create("adm-bad-policy", 1, {"cleanup.policy": "compact,shred"}))
    refused("create_unknown_key", lambda: create("adm-unknown", 1, {"no.such.config": "1"}))

    def cluster():
        d = admin.describe_cluster(request_timeout=WAIT).result(WAIT)
        return {
            "cluster_id": d.cluster_id,
            "controller": d.controller.id,
            "nodes": [[n.id, n.host, n.port] for n in d.nodes],
        }

    ok("describe_cluster", cluster)

    def topics(names):
        out = {}
        for name, f in admin.describe_topics(TopicCollection(names), request_timeout=WAIT).items():
            d = f.result(WAIT)
            out[name] = [
                [p.id, p.leader.id, [n.id for n in p.replicas], [n.id for n in p.isr]]
                for p in d.partitions
            ]
        return out

    ok("describe_topics", lambda: topics(["adm-topic", "adm-single"]))
    refused("describe_missing_topic", lambda: topics(["adm-missing"]))

    def listed():
        md = admin.list_topics(timeout=WAIT)
        return {
            "topics": {n: len(t.partitions) for n, t in md.topics.items()},
            "brokers": [[b.id, b.host, b.port] for b in md.brokers.values()],
        }

    ok("list_topics", listed)

    def partitions(n):
        return one(admin.create_partitions([NewPartitions("adm-topic", n)], request_timeout=WAIT))

    ok("grow_partitions", lambda: partitions(5))
    ok("grown", lambda: len(topics(["adm-topic"])["adm-topic"]))
    refused("shrink_partitions", lambda: partitions(4))
    ok("after_shrink", lambda: len(topics(["adm-topic"])["adm-topic"]))
    # A new partition takes records like the old ones.
    ok("produce_new_partition", lambda: produce("adm-topic", [(4, "in-4", None)]))
    ok("new_partition_end", lambda: list_offset("adm-topic", 4, OffsetSpec.latest())[0])


# --- groups -------------------------------------------------------------------------------

GROUP = "adm-group"
GTOPIC = "adm-grouped"


def section_groups():
    ok("create", lambda: create(GTOPIC, 3))
    ok(
        "produce",
        lambda: produce(GTOPIC, [(p, f"p{p}-{i}", None) for p in range(3) for i in range(10)]),
    )
    member_conf = {"group.id": GROUP, "auto.offset.reset": "earliest"}
    ok(
        "first_member_read",
        lambda: len(consume(member_conf, [GTOPIC], want=30, commit=True)),
    )
    ok("listed_after_first", listed_groups)
    ok("listed_empty_filter", lambda: listed_groups(states={ConsumerGroupState.EMPTY}))
    ok("listed_stable_filter", lambda: listed_groups(states={ConsumerGroupState.STABLE}))
    ok("described_after_first", lambda: described_group(GROUP))
    ok("offsets_after_first", lambda: group_offsets(GROUP))

    # A member that stays in the group while the admin looks and tries to change it.
    stop = threading.Event()
    assigned = threading.Event()

    def member():
        c = Consumer(
            {
                "bootstrap.servers": BOOTSTRAP,
                "group.id": GROUP,
                "client.id": "adm-member",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **MEMBER,
            }
        )
        c.subscribe([GTOPIC], on_assign=lambda _c, _ps: assigned.set())
        while not stop.is_set():
            c.poll(0.2)
        c.close()

    t = threading.Thread(target=member, daemon=True)
    t.start()
    try:
        ok("member_assigned", lambda: must(assigned.wait(WAIT), "the member got no assignment"))
        ok("described_active", lambda: described_group(GROUP))
        ok("listed_active", listed_groups)
        refused("delete_active", delete_group)

        def alter_active():
            r = one(
                admin.alter_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(GROUP, [TopicPartition(GTOPIC, 0, 0)])],
                    request_timeout=WAIT,
                )
            )
            errors = [tp.error for tp in r.topic_partitions if tp.error]
            if errors:
                raise KafkaException(errors[0])
            return r

        refused("alter_active", alter_active)
        ok("offset_delete_active", lambda: offset_delete(GROUP, GTOPIC, 2))
    finally:
        stop.set()
        t.join(WAIT)
    ok("member_left", lambda: must(not t.is_alive(), "the member did not close"))
    ok("described_after_leave", lambda: described_group(GROUP))
    ok("offsets_after_leave", lambda: group_offsets(GROUP))

    # Reset as kafka-consumer-groups does: --to-earliest looks the offset up, then commits it.
    earliest = ok("earliest_p0", lambda: list_offset(GTOPIC, 0, OffsetSpec.earliest())[0])

    def alter():
        r = one(
            admin.alter_consumer_group_offsets(
                [
                    ConsumerGroupTopicPartitions(
                        GROUP,
                        [TopicPartition(GTOPIC, 0, earliest), TopicPartition(GTOPIC, 1, 5)],
                    )
                ],
                request_timeout=WAIT,
            )
        )
        return sorted(
            [tp.partition, tp.offset, tp.error and tp.error.name()] for tp in r.topic_partitions
        )

    ok("alter", alter)
    ok("offsets_after_alter", lambda: group_offsets(GROUP))
    ok("offset_delete", lambda: offset_delete(GROUP, GTOPIC, 2))
    ok("offsets_after_offset_delete", lambda: group_offsets(GROUP))
    # p0 from its reset, p1 from 5, p2 (its commit deleted) from auto.offset.reset: earliest.
    ok("resumed", lambda: sorted(consume(member_conf, [GTOPIC], want=25)))

    ok("delete", delete_group)
    ok("listed_after_delete", listed_groups)
    ok("offsets_after_delete", lambda: group_offsets(GROUP))
    refused("delete_again", delete_group)


def delete_group():
    return one(admin.delete_consumer_groups([GROUP], request_timeout=WAIT))


def offset_delete(group, topic, partition):
    """OffsetDelete through kafka-python: per partition, the error's name (NoError if none)."""
    from kafka import TopicPartition as KTopicPartition
    from kafka.admin import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=WAIT * 1000)
    try:
        r = a.delete_group_offsets(group, [KTopicPartition(topic, partition)])
    finally:
        a.close()
    return {f"{tp.topic}-{tp.partition}": e.__name__ for tp, e in r.items()}


# --- offsets ------------------------------------------------------------------------------

STAMPED = "adm-stamped"
BASE = 1_700_000_000_000
# One record per second from BASE, but offset 2 and offset 6 stamped later than the others:
# "the first record at or after T" then differs from "the record stamped nearest T".
STAMPS = [BASE + i * 1000 for i in range(10)]
STAMPS[2] = BASE + 50_000
STAMPS[6] = BASE + 100_000


def section_offsets():
    ok("create", lambda: create(STAMPED, 1))
    ok("produce", lambda: produce(STAMPED, [(0, f"s{i}", ts) for i, ts in enumerate(STAMPS)]))

    def offsets(prefix):
        specs = [
            ("earliest", OffsetSpec.earliest()),
            ("latest", OffsetSpec.latest()),
            ("max_timestamp", OffsetSpec.max_timestamp()),
            ("at_base", OffsetSpec.for_timestamp(BASE)),
            ("at_2500", OffsetSpec.for_timestamp(BASE + 2500)),
            ("at_40000", OffsetSpec.for_timestamp(BASE + 40_000)),
            ("at_after_all", OffsetSpec.for_timestamp(BASE + 200_000)),
        ]
        for name, spec in specs:
            ok(f"{prefix}_{name}", lambda spec=spec: list_offset(STAMPED, 0, spec))

    offsets("before")

    def delete_records(before):
        r = one(admin.delete_records([TopicPartition(STAMPED, 0, before)], request_timeout=WAIT))
        return r.low_watermark

    ok("delete_records", lambda: delete_records(4))
    offsets("after")
    # A consumer from the beginning starts at the new log start.
    beginning = [TopicPartition(STAMPED, 0, OFFSET_BEGINNING)]
    ok(
        "read_from_beginning",
        lambda: consume({"group.id": "adm-unused"}, assign=beginning, want=6),
    )
    refused("delete_records_past_end", lambda: delete_records(100))
    ok("delete_records_behind_start", lambda: delete_records(2))


# --- configs ------------------------------------------------------------------------------

CTOPIC = "adm-configured"


def section_configs():
    ok("create", lambda: create(CTOPIC, 1, {"retention.ms": "3600000"}))
    topic = ConfigResource(ResourceType.TOPIC, CTOPIC)

    def describe():
        entries = one(admin.describe_configs([topic], request_timeout=WAIT))
        return {
            name: {
                "value": e.value,
                "source": ConfigSource(e.source).name,
                "read_only": e.is_read_only,
            }
            for name, e in entries.items()
        }

    def incremental(*ops):
        entries = [
            ConfigEntry(k, v, incremental_operation=getattr(AlterConfigOpType, op))
            for op, k, v in ops
        ]
        return one(
            admin.incremental_alter_configs(
                [ConfigResource(ResourceType.TOPIC, CTOPIC, incremental_configs=entries)],
                request_timeout=WAIT,
            )
        )

    def legacy(values):
        with warnings.catch_warnings():
            # Deprecated by the client in favour of the incremental API; tools still send it.
            warnings.simplefilter("ignore", DeprecationWarning)
            return one(
                admin.alter_configs(
                    [ConfigResource(ResourceType.TOPIC, CTOPIC, set_config=values)],
                    request_timeout=WAIT,
                )
            )

    ok("described_created", describe)
    ok("set_retention", lambda: incremental(("SET", "retention.ms", "7200000")))
    ok("described_set", describe)
    refused("set_unknown", lambda: incremental(("SET", "no.such.config", "1")))
    # A request with one refused key changes nothing, not even its valid keys.
    refused(
        "set_mixed",
        lambda: incremental(("SET", "retention.ms", "1000"), ("SET", "no.such.config", "1")),
    )
    refused("set_segment_bytes", lambda: incremental(("SET", "segment.bytes", "536870912")))
    refused("set_bad_value", lambda: incremental(("SET", "retention.ms", "soon")))
    ok(
        "set_timestamp_type",
        lambda: incremental(("SET", "message.timestamp.type", "LogAppendTime")),
    )
    ok("described_refusals", describe)
    ok("delete_retention", lambda: incremental(("DELETE", "retention.ms", None)))
    ok("described_deleted", describe)
    ok("legacy_max_message", lambda: legacy({"max.message.bytes": "2000000"}))
    ok("described_legacy_max_message", describe)
    # AlterConfigs replaces the whole set: what it does not name goes back to its default.
    ok("legacy_retention", lambda: legacy({"retention.ms": "5000000"}))
    ok("described_legacy_retention", describe)
    refused("legacy_unknown", lambda: legacy({"no.such.config": "1"}))
    broker = ConfigResource(ResourceType.BROKER, "0")
    ok(
        "broker_config_names",
        lambda: sorted(one(admin.describe_configs([broker], request_timeout=WAIT))),
    )


SECTION = {
    "topics": section_topics,
    "groups": section_groups,
    "offsets": section_offsets,
    "configs": section_configs,
}

timer = threading.Timer(DEADLINE, on_deadline)
timer.daemon = True
timer.start()
for section in SECTIONS:
    report = results[section] = {}
    try:
        SECTION[section]()
    except Exception as e:  # noqa: BLE001 - a bug here: still print what was seen
        failures.append(f"{section}: {type(e).__name__}: {e}")
finish(1 if failures else 0)
