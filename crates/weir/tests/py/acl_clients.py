"""weir's Kafka door with access control lists, through real clients: what a user may do
works and what it may not is refused with Kafka's own authorization errors.

    acl_clients.py KAFKA USER PASSWORD
    acl_clients.py KAFKA USER PASSWORD admin

The user (`alice` in the test) may read topics `orders.*` and use groups `g1*`, nothing else;
topics `orders.eu` (two records in it) and `secret` exist. Each client is asked to do both
kinds of thing:

- confluent-kafka (librdkafka): the topic listing shows `orders.eu` and not `secret`; a
  produce to `orders.eu` fails TOPIC_AUTHORIZATION_FAILED; group `g1` reads both records;
  the admin client cannot create or delete a topic, nor describe group `g2`.
- kafka-python: group `g1` reads both records; group `g2` fails
  GroupAuthorizationFailedError; the offsets of `secret` fail TopicAuthorizationFailedError.

With `admin`, the user is a super user managing the rules through Kafka's ACL APIs:
confluent-kafka creates two rules for `User:carol` (and is refused one for a host other than
`*`), describes them, deletes one; kafka-python describes what is left.

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


def admin_acls():
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePatternFilter,
    )
    from kafka.admin import ResourceType as KResourceType

    admin = AdminClient(conf)
    logs = AclBinding(ResourceType.TOPIC, "logs.", ResourcePatternType.PREFIXED,
                      "User:carol", "*", AclOperation.READ, AclPermissionType.ALLOW)
    group = AclBinding(ResourceType.GROUP, "carols", ResourcePatternType.LITERAL,
                       "User:carol", "*", AclOperation.READ, AclPermissionType.ALLOW)
    for f in admin.create_acls([logs, group], request_timeout=10).values():
        f.result()
    hosted = AclBinding(ResourceType.TOPIC, "x", ResourcePatternType.LITERAL,
                        "User:carol", "10.0.0.1", AclOperation.READ, AclPermissionType.ALLOW)
    try:
        for f in admin.create_acls([hosted], request_timeout=10).values():
            f.result()
        raise AssertionError("a rule for one host was taken")
    except KafkaException as e:
        report["create_hosted_error"] = str(e.args[0].str())
    carols = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY,
                              "User:carol", None, AclOperation.ANY, AclPermissionType.ANY)
    found = admin.describe_acls(carols, request_timeout=10).result()
    report["described"] = sorted(f"{b.restype_int}:{b.name}:{b.resource_pattern_type_int}"
                                 for b in found)
    # Every rule of the server, the test's own for alice and bob among them.
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY,
                                  None, None, AclOperation.ANY, AclPermissionType.ANY)
    report["described_all"] = len(admin.describe_acls(everything, request_timeout=10).result())
    groups = AclBindingFilter(ResourceType.GROUP, "carols", ResourcePatternType.LITERAL,
                              "User:carol", "*", AclOperation.ANY, AclPermissionType.ANY)
    deleted = [b for f in admin.delete_acls([groups], request_timeout=10).values()
               for b in f.result()]
    report["deleted"] = [f"{b.restype_int}:{b.name}" for b in deleted]

    kadmin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=password,
    )
    acls, error = kadmin.describe_acls(ACLFilter(
        principal="User:carol",
        host="*",
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(KResourceType.ANY, None,
                                               ACLResourcePatternType.ANY),
    ))
    report["kafka_python_described"] = sorted(
        f"{a.resource_pattern.resource_type.name}:{a.resource_pattern.resource_name}"
        for a in acls)
    kadmin.close()


def refused_acl_admin():
    """A user without the right on the cluster may not see the rules (kafka-python: librdkafka
    1.x/2.x hands DescribeAcls' top-level error to confluent-kafka as an empty list)."""
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePatternFilter,
        ResourceType,
    )
    from kafka.errors import ClusterAuthorizationFailedError

    kadmin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=password,
    )
    everything = ACLFilter(
        principal=None,
        host="*",
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(ResourceType.ANY, None,
                                               ACLResourcePatternType.ANY),
    )
    try:
        kadmin.describe_acls(everything)
        raise AssertionError(f"{user} described the rules")
    except ClusterAuthorizationFailedError as e:
        report["describe_acls_error"] = type(e).__name__
    kadmin.close()


if sys.argv[4:] == ["admin"]:
    admin_acls()
else:
    confluent()
    kafka_python()
    refused_acl_admin()
print(json.dumps(report))
