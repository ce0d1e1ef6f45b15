"""A KIP-848 consumer group (group.protocol=consumer) through confluent-kafka: two members
share a topic's partitions and read every record once between them, committing; one leaves,
and the other is given its partitions and reads what follows. Prints one JSON line.

Usage: kafka_consumer_protocol.py BOOTSTRAP TOPIC GROUP (TOPIC exists, 3 partitions).
"""

import json
import sys
import time

from confluent_kafka import Consumer, Producer

BOOTSTRAP, TOPIC, GROUP = sys.argv[1:4]
DEADLINE = time.time() + 60


def produce(prefix, n):
    p = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    for i in range(n):
        p.produce(TOPIC, key=f"k{i}".encode(), value=f"{prefix}-{i}".encode())
    if p.flush(20) != 0:
        raise SystemExit("produce did not finish")


def consumer(name):
    return Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": GROUP,
        "group.protocol": "consumer",
        "client.id": name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })


def drain(consumers, want, seen):
    """Polls every consumer in turn until `want` values are seen in all, committing what
    each read (a commit carries the member's epoch, which the coordinator checks; a refused
    one raises here)."""
    while len(want - set(seen)) > 0:
        if time.time() > DEADLINE:
            raise SystemExit(f"timed out: {len(want - set(seen))} of {len(want)} unread")
        for c in consumers:
            batch = c.consume(num_messages=500, timeout=0.1)
            for m in batch:
                if m.error():
                    raise SystemExit(f"consume error: {m.error()}")
                seen.append(m.value().decode())
            if batch:
                # Every partition's position, not only the last record's partition.
                c.commit(asynchronous=False)


def settle(consumers, partitions):
    """Polls until the members' assignments are all non-empty and cover `partitions` between
    them, each partition once: the broker hands a partition over only once its last owner
    gave it up, so this converges within a few heartbeats."""
    while True:
        owned = [sorted(p.partition for p in c.assignment()) for c in consumers]
        flat = sorted(p for ps in owned for p in ps)
        if all(owned) and flat == partitions:
            return owned
        if time.time() > DEADLINE:
            raise SystemExit(f"assignments never settled: {owned}")
        for c in consumers:
            if c.poll(0.1) is not None:
                raise SystemExit("a record before any was produced")


first, second = consumer("first"), consumer("second")
first.subscribe([TOPIC])
second.subscribe([TOPIC])
# Both members hold partitions before anything is produced, so both read some.
settle([first, second], [0, 1, 2])
produce("a", 300)
seen = []
drain([first, second], {f"a-{i}" for i in range(300)}, seen)
shared = [sorted(p.partition for p in c.assignment()) for c in (first, second)]
second.close()
produce("b", 100)
after = []
drain([first], {f"b-{i}" for i in range(100)}, after)
alone = sorted(p.partition for p in first.assignment())
first.close()
print(json.dumps({
    "seen": seen,
    "duplicates": len(seen) - len(set(seen)),
    "shared": shared,
    "after": after,
    "alone": alone,
}))
