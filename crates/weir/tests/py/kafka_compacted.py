"""A compacted topic through weir's Kafka listener with the real Python clients; prints one
JSON line.

Usage: kafka_compacted.py STEP BOOTSTRAP TOPIC [N]

Steps:
- create: confluent-kafka's AdminClient creates TOPIC (1 partition) with cleanup.policy=compact,
  small segments, min.cleanable.dirty.ratio=0.01 and delete.retention.ms=0, then describes it.
- produce: N records over 40 keys ("k{i % 40}" = "v{i}"), then a tombstone (null value) for
  keys k0..k4, with confluent-kafka's idempotent producer; then one keyless record, which the
  broker must refuse. Prints [offset, key, value] for each record.
- consume: reads TOPIC from the beginning to the end with kafka-python, aiokafka and
  confluent-kafka (each without a group); prints each one's [offset, key, value] list.

Bounded: every wait has a deadline.
"""

import asyncio
import json
import sys
import time

STEP, BOOTSTRAP, TOPIC = sys.argv[1:4]
N = int(sys.argv[4]) if len(sys.argv) > 4 else 0
DEADLINE = 60.0


def out(**kw):
    print(json.dumps(kw), flush=True)


def create():
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    configs = {
        "cleanup.policy": "compact",
        "segment.bytes": "4096",
        "max.message.bytes": "4096",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "0",
    }
    admin.create_topics([NewTopic(TOPIC, 1, 1, config=configs)])[TOPIC].result(30)
    res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC)
    described = admin.describe_configs([res])[res].result(30)
    out(configs={k: v.value for k, v in described.items()})


def produce():
    from confluent_kafka import KafkaError, Producer

    p = Producer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 2048,
        }
    )
    records, errors = [], []

    def done(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            v = msg.value()
            records.append([msg.offset(), msg.key().decode(), None if v is None else v.decode()])

    for i in range(N):
        p.produce(TOPIC, key=f"k{i % 40}", value=f"v{i}", on_delivery=done)
        p.poll(0)
    for k in range(5):
        p.produce(TOPIC, key=f"k{k}", value=None, on_delivery=done)
    left = p.flush(30)
    if errors or left:
        raise RuntimeError(f"delivery failed: {errors[:3]} ({left} not flushed)")
    # A record without a key: refused by a compacted topic.
    plain = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "retries": 0})
    refused = []

    def keyless(err, msg):
        refused.append(None if err is None else [err.name(), err.str()])

    plain.produce(TOPIC, value="no key", on_delivery=keyless)
    plain.flush(30)
    records.sort()
    out(records=records, keyless=refused[0] if refused else "no answer")


def kp_consume():
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    tp = TopicPartition(TOPIC, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    end = c.end_offsets([tp])[tp]
    got, deadline = [], time.time() + DEADLINE
    while c.position(tp) < end and time.time() < deadline:
        for records in c.poll(timeout_ms=200).values():
            for r in records:
                got.append([r.offset, r.key.decode(), None if r.value is None else r.value.decode()])
    c.close()
    return got


async def aio_consume():
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(TOPIC, 0)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        end = (await c.end_offsets([tp]))[tp]
        got, deadline = [], time.time() + DEADLINE
        while await c.position(tp) < end and time.time() < deadline:
            batch = await c.getmany(tp, timeout_ms=200)
            for r in batch.get(tp, []):
                got.append([r.offset, r.key.decode(), None if r.value is None else r.value.decode()])
        return got
    finally:
        await c.stop()


def ck_consume():
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": "unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
    got, deadline = [], time.time() + DEADLINE
    while time.time() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error() is not None:
            if m.error().code() == KafkaError._PARTITION_EOF:
                break
            continue
        v = m.value()
        got.append([m.offset(), m.key().decode(), None if v is None else v.decode()])
    c.close()
    return got


def consume():
    out(
        **{
            "kafka-python": kp_consume(),
            "aiokafka": asyncio.run(aio_consume()),
            "confluent-kafka": ck_consume(),
        }
    )


{"create": create, "produce": produce, "consume": consume}[STEP]()
