"""weir's Kafka door with access control lists, through real clients: what a user may do
works and what it may not is refused with Kafka's own authorization errors.

    acl_clients.py KAFKA USER PASSWORD

The user (`alice` in the test) may read topics `orders.*` and use group `g1`, nothing else;
topics `orders.eu` (two records in it) and `secret` exist. Each client is asked to do both
kinds of thing:

- confluent-kafka (librdkafka): the topic listing shows `orders.eu` and not `secret`; a
  produce to `orders.eu` fails TOPIC_AUTHORIZATION_FAILED; group `g1` reads both records;
  the admin client cannot create or delete a topic, nor describe group `g2`.
- kafka-python: group `g1` reads both records; group `g2` fails
  GroupAuthorizationFailedError; the offsets of `secret` fail TopicAuthorizationFailedError.

Prints one JSON report; an unexpected outcome is an exception (non-zero exit).
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, user, password = sys.argv[1:4]
report = {}

conf = {
    "bootstrap.servers": bootstrap,
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanisms": "SCRAM-SHA-512",
    "sasl.username": user,
    "sasl.password": password,
}


def confluent():
    admin = AdminClient(conf)
    report["confluent_topics"] = sorted(admin.list_topics(timeout=10).topics)

    # A produce the ACLs refuse: the delivery report carries the broker's error.
    errors = []
    producer = Producer({**conf, "message.timeout.ms": 10000})
    producer.produce(
        "orders.eu", b"nope", on_delivery=lambda err, msg: errors.append(err)
    )
    producer.flush(15)
    assert len(errors) == 1 and errors[0] is not None, errors
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, errors[0]
    report["confluent_produce_error"] = errors[0].name()

    consumer = Consumer(
        {**conf, "group.id": "g1", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe(["orders.eu"])
    values, deadline = [], time.time() + 30
    while len(values) < 2 and time.time() < deadline:
        m = consumer.poll(1)
        if m is None:
            continue
        if m.error():
            raise KafkaException(m.error())
        values.append(m.value().decode())
    consumer.commit(asynchronous=False)
    consumer.close()
    report["confluent_g1_values"] = values

    futures = admin.create_topics([NewTopic("alices", 1, 1)], request_timeout=10)
    try:
        futures["alices"].result()
        raise AssertionError("alice created a topic")
    except KafkaException as e:
        report["confluent_create_error"] = e.args[0].name()
    futures = admin.delete_topics(["orders.eu"], request_timeout=10)
    try:
        futures["orders.eu"].result()
        raise AssertionError("alice deleted a topic")
    except KafkaException as e:
        report["confluent_delete_error"] = e.args[0].name()
    futures = admin.describe_consumer_groups(["g2"], request_timeout=10)
    try:
        futures["g2"].result()
        raise AssertionError("alice described group g2")
    except KafkaException as e:
        report["confluent_describe_g2_error"] = e.args[0].name()
    groups = admin.list_consumer_groups(request_timeout=10).result()
    report["confluent_listed_groups"] = sorted(g.group_id for g in groups.valid)


def kafka_python():
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import (
        GroupAuthorizationFailedError,
        TopicAuthorizationFailedError,
    )

    common = dict(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=password,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10000,
    )
    consumer = KafkaConsumer("orders.eu", group_id="g1", **common)
    # Group g1 committed above: a new member of it starts there, so read from the start.
    consumer.poll(timeout_ms=5000)
    for tp in consumer.assignment():
        consumer.seek_to_beginning(tp)
    values = [m.value.decode() for m, _ in zip(consumer, range(2))]
    consumer.close()
    report["kafka_python_g1_values"] = values

    try:
        consumer = KafkaConsumer("orders.eu", group_id="g2", **common)
        list(consumer)
        raise AssertionError("alice joined group g2")
    except GroupAuthorizationFailedError as e:
        report["kafka_python_g2_error"] = type(e).__name__
    # Where a partition of secret starts is refused (kafka-python raises it from ListOffsets;
    # its fetcher only logs a refused fetch).
    consumer = KafkaConsumer(**common)
    try:
        consumer.beginning_offsets([TopicPartition("secret", 0)])
        raise AssertionError("alice described topic secret")
    except TopicAuthorizationFailedError as e:
        report["kafka_python_secret_error"] = type(e).__name__
    consumer.close()


confluent()
kafka_python()
print(json.dumps(report))
