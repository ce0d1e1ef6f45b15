"""Drives weir's Kafka listener with a real Python Kafka client; prints one JSON line.

Usage: kafka_clients.py LIBRARY SCENARIO BOOTSTRAP TOPIC [GROUP]

LIBRARY is kafka-python, aiokafka or confluent-kafka. Scenarios:
- produce: 200 keyed records "LIB-i" with the client's idempotent producer and acks=all;
  prints the offsets the broker returned.
- consume: reads TOPIC from the beginning without a group until it has seen 200 records.
- group: three consumers in GROUP read TOPIC while this script produces 300 records
  ("g-i") into it; after the third consumer has read some, it commits and leaves; the other
  two must read everything. Then 50 more ("r-i") are produced and a fresh member of GROUP
  must read exactly those (it resumes from the committed offsets).

Bounded: every wait has a deadline; on a deadline the JSON says what was seen and the test
fails on it.
"""

import asyncio
import json
import sys
import threading
import time

LIB, SCENARIO, BOOTSTRAP, TOPIC = sys.argv[1:5]
GROUP = sys.argv[5] if len(sys.argv) > 5 else None
DEADLINE = 60.0
# Fast rebalances: a short heartbeat so that members learn of a new round quickly.
HEARTBEAT_MS = 300
SESSION_MS = 6000


def out(**kw):
    print(json.dumps(kw), flush=True)


# --- kafka-python -------------------------------------------------------------------------


def kp_producer():
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True, linger_ms=5
    )


def kp_produce(prefix, n, keyed=True):
    p = kp_producer()
    futures = [
        p.send(TOPIC, key=(f"k{i % 7}".encode() if keyed else None), value=f"{prefix}-{i}".encode())
        for i in range(n)
    ]
    p.flush(timeout=30)
    offsets = [(f.get(timeout=30).partition, f.get(timeout=30).offset) for f in futures]
    p.close()
    return offsets


def kp_consumer(group, **extra):
    from kafka import KafkaConsumer

    return KafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        heartbeat_interval_ms=HEARTBEAT_MS,
        session_timeout_ms=SESSION_MS,
        **extra,
    )


def kp_poll(c):
    got = []
    for records in c.poll(timeout_ms=200).values():
        got.extend(r.value.decode() for r in records)
    return got


# --- confluent-kafka ----------------------------------------------------------------------


def ck_produce(prefix, n, keyed=True):
    from confluent_kafka import Producer

    p = Producer(
        {"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
    )
    offsets, errors = [], []

    def done(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append((msg.partition(), msg.offset()))

    for i in range(n):
        p.produce(TOPIC, key=(f"k{i % 7}" if keyed else None), value=f"{prefix}-{i}", on_delivery=done)
        p.poll(0)
    left = p.flush(30)
    if errors or left:
        raise RuntimeError(f"delivery failed: {errors[:3]} ({left} not flushed)")
    return offsets


def ck_consumer(group):
    from confluent_kafka import Consumer

    conf = {
        "bootstrap.servers": BOOTSTRAP,
        "group.id": group or "unused",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "heartbeat.interval.ms": HEARTBEAT_MS,
        "session.timeout.ms": SESSION_MS,
    }
    c = Consumer(conf)
    return c


def ck_poll(c):
    got = []
    for m in c.consume(num_messages=500, timeout=0.2):
        if m.error() is None:
            got.append(m.value().decode())
    return got


# --- common drivers (threads) -------------------------------------------------------------


def produce(prefix, n, keyed=True):
    if LIB == "kafka-python":
        return kp_produce(prefix, n, keyed)
    if LIB == "confluent-kafka":
        return ck_produce(prefix, n, keyed)
    return asyncio.run(aio_produce(prefix, n, keyed))


def consume_plain(n):
    """Reads from the beginning without committing; stops at n records or the deadline."""
    if LIB == "aiokafka":
        return asyncio.run(aio_consume_plain(n))
    if LIB == "kafka-python":
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
        parts = [TopicPartition(TOPIC, p) for p in c.partitions_for_topic(TOPIC)]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        poll = kp_poll
    else:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        c = ck_consumer(None)
        meta = c.list_topics(TOPIC, timeout=10)
        c.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in meta.topics[TOPIC].partitions])
        poll = ck_poll
    got, end = [], time.time() + DEADLINE
    while len(got) < n and time.time() < end:
        got.extend(poll(c))
    c.close()
    return got


def group_threads():
    """Three members in threads; the third leaves after reading some records."""
    seen, lock = [], threading.Lock()
    stop = threading.Event()
    left = threading.Event()

    def member(idx):
        if LIB == "kafka-python":
            c = kp_consumer(GROUP)
            poll, commit = kp_poll, (lambda: c.commit())
        else:
            c = ck_consumer(GROUP)
            c.subscribe([TOPIC])
            poll, commit = ck_poll, (lambda: c.commit(asynchronous=False))
        mine = 0
        while not stop.is_set():
            got = poll(c)
            if got:
                with lock:
                    seen.extend(got)
                mine += len(got)
                try:
                    commit()
                except Exception as e:  # a rebalance fenced the commit: redelivered later
                    print(f"member {idx}: commit failed: {e}", file=sys.stderr)
            if idx == 2 and mine >= 10:
                break
        c.close()
        if idx == 2:
            left.set()

    threads = [threading.Thread(target=member, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    # Produce while the members read, in small steps.
    for step in range(30):
        produce_step(step)
        time.sleep(0.05)
    end = time.time() + DEADLINE
    while time.time() < end:
        with lock:
            if len(set(seen)) >= 300 and left.is_set():
                break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(30)
    return seen, left.is_set()


def produce_step(step):
    """Produces g-(10*step) .. g-(10*step+9)."""
    if LIB == "kafka-python":
        from kafka import KafkaProducer

        global _kp
        if "_kp" not in globals():
            _kp = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
        for i in range(step * 10, step * 10 + 10):
            _kp.send(TOPIC, key=f"k{i % 7}".encode(), value=f"g-{i}".encode())
        _kp.flush(timeout=30)
    else:
        from confluent_kafka import Producer

        global _ck
        if "_ck" not in globals():
            _ck = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
        for i in range(step * 10, step * 10 + 10):
            _ck.produce(TOPIC, key=f"k{i % 7}", value=f"g-{i}")
        if _ck.flush(30):
            raise RuntimeError("flush timed out")


def resume_threads(n):
    """A fresh member of GROUP reads until n records or a quiet second after them."""
    if LIB == "kafka-python":
        c = kp_consumer(GROUP)
        poll = kp_poll
    else:
        c = ck_consumer(GROUP)
        c.subscribe([TOPIC])
        poll = ck_poll
    got, end, quiet_until = [], time.time() + DEADLINE, None
    while time.time() < end:
        got.extend(poll(c))
        if len(got) >= n:
            quiet_until = quiet_until or time.time() + 1.0
            if time.time() >= quiet_until:
                break
    c.close()
    return got


# --- aiokafka -------------------------------------------------------------------------------


async def aio_produce(prefix, n, keyed=True):
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
    await p.start()
    try:
        futures = [
            await p.send(TOPIC, key=(f"k{i % 7}".encode() if keyed else None), value=f"{prefix}-{i}".encode())
            for i in range(n)
        ]
        metas = [await f for f in futures]
    finally:
        await p.stop()
    return [(m.partition, m.offset) for m in metas]


def aio_consumer(group, **extra):
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        heartbeat_interval_ms=HEARTBEAT_MS,
        session_timeout_ms=SESSION_MS,
        **extra,
    )


async def aio_poll(c):
    got = []
    for records in (await c.getmany(timeout_ms=200)).values():
        got.extend(r.value.decode() for r in records)
    return got


async def aio_consume_plain(n):
    from aiokafka import AIOKafkaConsumer

    # No group: the consumer assigns itself every partition and starts at the earliest offset.
    c = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=BOOTSTRAP, group_id=None, auto_offset_reset="earliest"
    )
    await c.start()
    try:
        got, end = [], time.time() + DEADLINE
        while len(got) < n and time.time() < end:
            got.extend(await aio_poll(c))
        return got
    finally:
        await c.stop()


async def aio_group():
    seen = []
    stop = asyncio.Event()
    left = asyncio.Event()

    async def member(idx):
        c = aio_consumer(GROUP)
        await c.start()
        mine = 0
        try:
            while not stop.is_set():
                got = await aio_poll(c)
                if got:
                    seen.extend(got)
                    mine += len(got)
                    try:
                        await c.commit()
                    except Exception as e:  # a rebalance fenced the commit
                        print(f"member {idx}: commit failed: {e}", file=sys.stderr)
                if idx == 2 and mine >= 10:
                    break
        finally:
            await c.stop()
        if idx == 2:
            left.set()

    from aiokafka import AIOKafkaProducer

    tasks = [asyncio.create_task(member(i)) for i in range(3)]
    p = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
    await p.start()
    try:
        for step in range(30):
            for i in range(step * 10, step * 10 + 10):
                await p.send(TOPIC, key=f"k{i % 7}".encode(), value=f"g-{i}".encode())
            await p.flush()
            await asyncio.sleep(0.05)
    finally:
        await p.stop()
    end = time.time() + DEADLINE
    while time.time() < end and not (len(set(seen)) >= 300 and left.is_set()):
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return seen, left.is_set()


async def aio_resume(n):
    c = aio_consumer(GROUP)
    await c.start()
    got, end, quiet_until = [], time.time() + DEADLINE, None
    try:
        while time.time() < end:
            got.extend(await aio_poll(c))
            if len(got) >= n:
                quiet_until = quiet_until or time.time() + 1.0
                if time.time() >= quiet_until:
                    break
    finally:
        await c.stop()
    return got


def main():
    if SCENARIO == "produce":
        offsets = produce(LIB, 200)
        out(count=len(offsets), offsets=offsets)
    elif SCENARIO == "consume":
        got = consume_plain(200)
        out(values=got)
    elif SCENARIO == "group":
        if LIB == "aiokafka":
            seen, left = asyncio.run(aio_group())
        else:
            seen, left = group_threads()
        produce("r", 50)
        if LIB == "aiokafka":
            resumed = asyncio.run(aio_resume(50))
        else:
            resumed = resume_threads(50)
        out(seen=sorted(set(seen)), duplicates=len(seen) - len(set(seen)), third_left=left, resumed=resumed)
    else:
        raise SystemExit(f"unknown scenario {SCENARIO}")


if __name__ == "__main__":
    main()
