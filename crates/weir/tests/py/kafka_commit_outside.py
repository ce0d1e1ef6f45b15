"""A consumer's commit outside the log, with confluent-kafka (librdkafka), as Kafka takes it.

Usage: kafka_commit_outside.py BOOTSTRAP TOPIC GROUP

TOPIC holds 5 records in partition 0. A member of GROUP commits offset 1000 (past the end, as
after a seek), which Kafka stores as given; a fresh member of GROUP then resumes from 1000,
gets OFFSET_OUT_OF_RANGE on its fetch, resets to the earliest offset (its
auto.offset.reset) and keeps consuming. Prints one JSON line: the commit's error (null if
none), the committed offset read back, and the values the fresh member read.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

BOOTSTRAP, TOPIC, GROUP = sys.argv[1:4]


def consumer():
    return Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )


c = consumer()
error = None
try:
    c.commit(offsets=[TopicPartition(TOPIC, 0, 1000)], asynchronous=False)
except KafkaException as e:
    error = str(e)
committed = c.committed([TopicPartition(TOPIC, 0)], timeout=10)[0].offset
c.close()

c = consumer()
c.subscribe([TOPIC])
seen = []
deadline = time.monotonic() + 30
while len(seen) < 5 and time.monotonic() < deadline:
    m = c.poll(0.5)
    if m is not None and m.error() is None:
        seen.append(m.value().decode())
c.close()
print(json.dumps({"commit_error": error, "committed": committed, "read": seen}), flush=True)
