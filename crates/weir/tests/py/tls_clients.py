"""weir's TLS listeners through real clients: confluent-kafka (librdkafka) with
security.protocol=SSL, Python's ssl for HTTPS, and the `websockets` client over wss://.

    tls_clients.py KAFKA_TLS HTTP_TLS CA_PEM [CLIENT_CERT CLIENT_KEY]

Produces 20 records to topic `secure` over Kafka/SSL, reads them back over Kafka/SSL, reads
/health over HTTPS, subscribes over wss:// and receives a record produced over HTTPS. Prints
one JSON report; a failure is an exception (non-zero exit).
"""

import asyncio
import json
import ssl
import sys
import urllib.request

from confluent_kafka import Consumer, Producer
from websockets.asyncio.client import connect

kafka, http, ca = sys.argv[1], sys.argv[2], sys.argv[3]
cert = sys.argv[4] if len(sys.argv) > 4 else None
key = sys.argv[5] if len(sys.argv) > 5 else None

ctx = ssl.create_default_context(cafile=ca)
if cert:
    ctx.load_cert_chain(cert, key)

rd = {"bootstrap.servers": kafka, "security.protocol": "SSL", "ssl.ca.location": ca}
if cert:
    rd.update({"ssl.certificate.location": cert, "ssl.key.location": key})

report = {}
p = Producer({**rd, "acks": "all", "enable.idempotence": True})
errors = []
for i in range(20):
    p.produce("secure", key=f"k{i}", value=f"v{i}", on_delivery=lambda e, m: e and errors.append(str(e)))
left = p.flush(20)
assert left == 0 and not errors, (left, errors)
c = Consumer({**rd, "group.id": "tls", "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe(["secure"])
got = []
for _ in range(200):
    m = c.poll(0.2)
    if m is None:
        if len(got) >= 20:
            break
        continue
    assert m.error() is None, m.error()
    got.append(m.value().decode())
c.close()
report["kafka_consumed"] = sorted(got)

with urllib.request.urlopen(f"https://{http}/health", context=ctx, timeout=10) as r:
    report["https_health"] = r.status


async def ws():
    async with connect(f"wss://{http}/ws", ssl=ctx) as s:
        await s.send(json.dumps({"op": "subscribe", "topics": ["secure"], "from": "latest"}))
        ack = json.loads(await asyncio.wait_for(s.recv(), 10))
        assert ack["type"] == "subscribed", ack
        body = json.dumps({"records": [{"key": "w", "value": "over wss"}]}).encode()
        req = urllib.request.Request(f"https://{http}/topics/secure/records", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            assert r.status == 200, r.status
        while True:
            m = json.loads(await asyncio.wait_for(s.recv(), 10))
            if m["type"] == "record":
                return m["value"]

report["wss_record"] = asyncio.run(ws())
print(json.dumps(report))
