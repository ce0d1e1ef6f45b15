"""Consumers whose group commit points outside the log keep consuming, as against Kafka.

Usage: kafka_commit_cases.py BOOTSTRAP TOPIC

Each case runs with confluent-kafka (librdkafka) and with kafka-python (a separate
implementation of the consumer), on its own topic TOPIC-CASE-LIB (one partition, made here)
and group of the same name, with auto.offset.reset=earliest:
- seek: a member reads a0..a4, seeks to 1000 (past the end) and must keep reading what is
  produced next; then it seeks to 1000 again and closes with auto-commit on, so that 1000 is
  committed (kafka-python commits its position, so it pauses the partition first lest a fetch
  reset it; librdkafka commits stored offsets, so the member stores the position it sought,
  as an application tracking its own position does).
- beyond: a consumer commits 1000 (past the high watermark) explicitly and leaves.
- retention: a consumer commits 3 of a0..a9, then DeleteRecords moves the log start to 8
  (standing in for retention), leaving the commit behind the log.
In each, a fresh member of the group then resumes from the commit (its fetch answered
OFFSET_OUT_OF_RANGE, it resets to the earliest offset) and must read what is produced after.

Prints one JSON line: {CASE: {LIB: {...what the consumers saw...}}, "failures": [...]};
exits 1 on a failure (an exception, or the 90 s deadline passed).
"""

import json
import os
import sys
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP, TOPIC = sys.argv[1:3]
WAIT = 10.0
DEADLINE = 90.0
FAR = 1000  # an offset past the end of every log here

results = {}
failures = []
lock = threading.Lock()


def finish(code):
    with lock:
        print(json.dumps({**results, "failures": failures}, sort_keys=True), flush=True)
    os._exit(code)


def on_deadline():
    with lock:
        failures.append(f"not done within {DEADLINE} s")
    finish(1)


admin = AdminClient({"bootstrap.servers": BOOTSTRAP})


def create(topic):
    (f,) = admin.create_topics([NewTopic(topic, 1)], request_timeout=WAIT).values()
    f.result(WAIT)


def produce(topic, values):
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    for v in values:
        p.produce(topic, value=v.encode(), partition=0)
    if p.flush(WAIT):
        raise RuntimeError(f"{topic}: records not acknowledged")


def delete_records(topic, before):
    (f,) = admin.delete_records([TopicPartition(topic, 0, before)], request_timeout=WAIT).values()
    return f.result(WAIT).low_watermark


class Confluent:
    name = "confluent-kafka"
    # For the seek case: auto-commit on, offsets stored by the application only.
    AUTO = {
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 100,
        "enable.auto.offset.store": False,
    }

    def __init__(self, topic, **conf):
        self.topic = topic
        self.c = Consumer(
            {
                "bootstrap.servers": BOOTSTRAP,
                "group.id": topic,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
                **conf,
            }
        )
        self.c.subscribe([topic])

    def read_until(self, last):
        """Values read until `last` arrived (or WAIT passed)."""
        seen = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and last not in seen:
            m = self.c.poll(0.1)
            if m is None:
                continue
            if m.error():
                raise RuntimeError(f"{self.topic}: {m.error()}")
            seen.append(m.value().decode())
        return seen

    def join(self):
        """Polls until the group assigned the partition; what it reads meanwhile is dropped,
        as the case is about the commit made next."""
        deadline = time.monotonic() + WAIT
        while not self.c.assignment():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.topic}: no assignment")
            self.c.poll(0.1)

    def seek_far(self, store=False):
        """Seeks to 1000; with `store`, so that close() commits 1000."""
        self.c.seek(TopicPartition(self.topic, 0, FAR))
        if store:
            self.c.store_offsets(offsets=[TopicPartition(self.topic, 0, FAR)])

    def commit(self, offset):
        self.c.commit(offsets=[TopicPartition(self.topic, 0, offset)], asynchronous=False)

    def committed(self):
        return self.c.committed([TopicPartition(self.topic, 0)], timeout=WAIT)[0].offset

    def close(self):
        self.c.close()


class KafkaPython:
    name = "kafka-python"
    AUTO = {"enable_auto_commit": True, "auto_commit_interval_ms": 100}

    def __init__(self, topic, **conf):
        from kafka import KafkaConsumer, TopicPartition as TP

        self.topic = topic
        self.tp = TP(topic, 0)
        self.c = KafkaConsumer(
            **{
                "bootstrap_servers": BOOTSTRAP,
                "group_id": topic,
                "auto_offset_reset": "earliest",
                "enable_auto_commit": False,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 300,
                **conf,
            },
        )
        # The topic's partitions before joining: a leader that does not know them yet assigns
        # nothing and rejoins at once, and kafka-python 3.0.12 can drop that second join when
        # a poll times out during it (the member then neither fetches nor heartbeats).
        self.c.partitions_for_topic(topic)
        self.c.subscribe([topic])

    def read_until(self, last):
        seen = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and last not in seen:
            for records in self.c.poll(timeout_ms=100).values():
                seen.extend(r.value.decode() for r in records)
        return seen

    def join(self):
        deadline = time.monotonic() + WAIT
        while not self.c.assignment():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.topic}: no assignment")
            self.c.poll(timeout_ms=100)

    def seek_far(self, store=False):
        if store:
            # Paused, so that no fetch at 1000 resets the position before close() commits it.
            self.c.pause(self.tp)
        self.c.seek(self.tp, FAR)

    def commit(self, offset):
        from kafka.structs import OffsetAndMetadata

        self.c.commit({self.tp: OffsetAndMetadata(offset, "", -1)})

    def committed(self):
        return self.c.committed(self.tp)

    def close(self):
        self.c.close()


def case_seek(lib, topic):
    out = {}
    produce(topic, [f"a{i}" for i in range(5)])
    c = lib(topic, **lib.AUTO)
    out["first"] = c.read_until("a4")
    c.seek_far()
    # The fetch at 1000 is refused; the member resets to the earliest offset and reads on.
    out["after_seek"] = c.read_until("a4")
    produce(topic, ["n0", "n1"])
    out["kept"] = c.read_until("n1")
    for _ in range(3):
        c.seek_far(store=True)
        c.close()  # commits the position sought, 1000
        c = lib(topic)
        out["committed"] = c.committed()
        if out["committed"] == FAR:
            break
        # On a loaded machine a member can lose its membership (a missed heartbeat) before
        # close() commits, and kafka-python then only logs the refused commit: a new member
        # joins, seeks and closes again.
        out.setdefault("close_commit_retries", 0)
        out["close_commit_retries"] += 1
        c.close()
        c = lib(topic, **lib.AUTO)
        c.join()
    out["resumed"] = c.read_until("n1")
    produce(topic, ["m0", "m1"])
    out["resumed_more"] = c.read_until("m1")
    c.close()
    return out


def case_beyond(lib, topic):
    out = {}
    produce(topic, [f"a{i}" for i in range(5)])
    c = lib(topic)
    c.join()
    c.commit(FAR)
    out["committed"] = c.committed()
    c.close()
    c = lib(topic)
    out["resumed"] = c.read_until("a4")
    produce(topic, ["n0", "n1"])
    out["resumed_more"] = c.read_until("n1")
    c.close()
    return out


def case_retention(lib, topic):
    out = {}
    produce(topic, [f"a{i}" for i in range(10)])
    c = lib(topic)
    c.join()
    c.commit(3)
    out["committed"] = c.committed()
    c.close()
    out["log_start"] = delete_records(topic, 8)
    c = lib(topic)
    out["resumed"] = c.read_until("a9")
    produce(topic, ["n0", "n1"])
    out["resumed_more"] = c.read_until("n1")
    c.close()
    return out


timer = threading.Timer(DEADLINE, on_deadline)
timer.daemon = True
timer.start()
for case, run in [("seek", case_seek), ("beyond", case_beyond), ("retention", case_retention)]:
    results[case] = {}
    for lib in [Confluent, KafkaPython]:
        topic = f"{TOPIC}-{case}-{lib.name}"
        try:
            create(topic)
            results[case][lib.name] = run(lib, topic)
        except Exception as e:  # noqa: BLE001 - reported, and the run fails
            failures.append(f"{case} {lib.name}: {type(e).__name__}: {e}")
finish(1 if failures else 0)
