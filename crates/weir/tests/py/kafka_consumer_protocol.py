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
                c.commit(message=batch[-1], asynchronous=False)


produce("a", 300)
first, second = consumer("first"), consumer("second")
first.subscribe([TOPIC])
second.subscribe([TOPIC])
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
