"""weir's Kafka door with authentication required, through real clients: confluent-kafka
(librdkafka) with SASL_SSL for PLAIN and SCRAM-SHA-512, kafka-python with SCRAM-SHA-256 over
SASL_PLAINTEXT, aiokafka with SCRAM-SHA-512 over SASL_SSL. Each writes to topic `auth` and
reads back what it wrote; each is also tried with a wrong password, which must fail.

    sasl_clients.py KAFKA KAFKA_TLS CA_PEM USER PASSWORD

Prints one JSON report: per client, the values it read back and the error a wrong password
got. A failure is an exception (non-zero exit).
"""

import asyncio
import json
import ssl
import sys

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

plain, tls, ca, user, password = sys.argv[1:6]
report = {}


def confluent(mechanism, pw, tag):
    conf = {
        "bootstrap.servers": tls,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": ca,
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": pw,
    }
    # A wrong password: metadata cannot be had, and librdkafka reports the broker's reason.
    if pw != password:
        reasons = []
        admin = AdminClient({**conf, "error_cb": lambda e: reasons.append(str(e))})
        try:
            admin.list_topics(timeout=5)
        except KafkaException as e:
            admin.poll(1)  # serves error_cb
            return {"error": str(e) + " | " + " | ".join(reasons)}
        raise AssertionError(f"{mechanism} with a wrong password listed topics")
    errors = []
    p = Producer({**conf, "acks": "all", "enable.idempotence": True})
    for i in range(5):
        p.produce("auth", key=tag, value=f"{tag}-{i}",
                  on_delivery=lambda e, m: e and errors.append(str(e)))
    left = p.flush(20)
    assert left == 0 and not errors, (left, errors)
    c = Consumer({**conf, "group.id": f"g-{tag}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe(["auth"])
    got = []
    for _ in range(200):
        m = c.poll(0.2)
        if m is None:
            if len(got) >= 5:
                break
            continue
        assert m.error() is None, m.error()
        if m.key() == tag.encode():
            got.append(m.value().decode())
    c.close()
    return {"read": sorted(got)}


report["confluent_plain"] = confluent("PLAIN", password, "cp")
report["confluent_scram512"] = confluent("SCRAM-SHA-512", password, "cs")
report["confluent_plain_wrong"] = confluent("PLAIN", password + "x", "x")
report["confluent_scram512_wrong"] = confluent("SCRAM-SHA-512", password + "x", "x")


def kafka_python(pw, tag):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.errors import KafkaError

    conf = dict(bootstrap_servers=plain, security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=user,
                sasl_plain_password=pw)
    if pw != password:
        try:
            KafkaProducer(**conf, request_timeout_ms=5000, max_block_ms=5000)
        except KafkaError as e:
            return {"error": f"{type(e).__name__}: {e}"}
        raise AssertionError("kafka-python with a wrong password connected")
    p = KafkaProducer(**conf)
    for i in range(5):
        p.send("auth", key=tag.encode(), value=f"{tag}-{i}".encode()).get(timeout=10)
    p.close()
    c = KafkaConsumer("auth", **conf, auto_offset_reset="earliest",
                      consumer_timeout_ms=3000, group_id=None)
    got = sorted(m.value.decode() for m in c if m.key == tag.encode())
    c.close()
    return {"read": got}


report["kafka_python_scram256"] = kafka_python(password, "kp")
report["kafka_python_scram256_wrong"] = kafka_python(password + "x", "x")


async def aiokafka_client(pw, tag):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.errors import KafkaError

    ctx = ssl.create_default_context(cafile=ca)
    conf = dict(bootstrap_servers=tls, security_protocol="SASL_SSL", ssl_context=ctx,
                sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=user,
                sasl_plain_password=pw)
    p = AIOKafkaProducer(**conf, request_timeout_ms=5000)
    if pw != password:
        try:
            await p.start()
        except KafkaError as e:
            await p.stop()
            return {"error": f"{type(e).__name__}: {e}"}
        await p.stop()
        raise AssertionError("aiokafka with a wrong password connected")
    await p.start()
    try:
        for i in range(5):
            await p.send_and_wait("auth", key=tag.encode(), value=f"{tag}-{i}".encode())
    finally:
        await p.stop()
    c = AIOKafkaConsumer("auth", **conf, auto_offset_reset="earliest")
    await c.start()
    got = []
    try:
        while len(got) < 5:
            batch = await asyncio.wait_for(c.getmany(timeout_ms=500), 20)
            for msgs in batch.values():
                got += [m.value.decode() for m in msgs if m.key == tag.encode()]
    finally:
        await c.stop()
    return {"read": sorted(got)}


report["aiokafka_scram512"] = asyncio.run(aiokafka_client(password, "ak"))
report["aiokafka_scram512_wrong"] = asyncio.run(aiokafka_client(password + "x", "x"))
print(json.dumps(report))
