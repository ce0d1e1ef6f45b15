"""Produces with confluent-kafka (librdkafka) while the broker is stopped under it.

Usage: kafka_produce_through_stop.py BOOTSTRAP TOPIC SECONDS

Sends records "kafka-i" (acks=all) in bursts for SECONDS, then waits for every delivery
report (bounded by message.timeout.ms). Prints one JSON line: the records the broker
acknowledged, each as [partition, offset, value], and the ones that failed, each as
[value, error code, error name, retriable]. librdkafka retries retriable broker errors by
itself until the message times out, so a final error carrying a broker's code (>= -1) is one
the broker made permanent; a broker that stops gracefully must give none.
"""

import json
import sys
import time

from confluent_kafka import Producer

BOOTSTRAP, TOPIC, SECONDS = sys.argv[1], sys.argv[2], float(sys.argv[3])

delivered = []
failed = []


def report(err, msg):
    value = msg.value().decode()
    if err is None:
        delivered.append([msg.partition(), msg.offset(), value])
    else:
        failed.append([value, err.code(), err.name(), err.retriable()])


p = Producer(
    {
        "bootstrap.servers": BOOTSTRAP,
        "acks": "all",
        "linger.ms": 2,
        "message.timeout.ms": 4000,
        "reconnect.backoff.max.ms": 200,
    }
)
i = 0
end = time.monotonic() + SECONDS
while time.monotonic() < end:
    for _ in range(20):
        try:
            p.produce(TOPIC, value=f"kafka-{i}".encode(), on_delivery=report)
            i += 1
        except BufferError:
            break
    p.poll(0.005)
left = p.flush(20)
print(json.dumps({"sent": i, "unreported": left, "delivered": delivered, "failed": failed}), flush=True)
