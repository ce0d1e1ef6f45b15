"""Takes the screenshots in docs/console/ of a server under a little load, for
scripts/console-screenshots: records produced through all three doors for LOAD_SECONDS, a
Kafka consumer group that keeps up and then stops reading, then each page at 1280x800 (and
the overview at a phone's width and in dark).

    console_screenshots.py HTTP KAFKA NATIVE WEIR_BINARY OUT_DIR
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../crates/weir/tests/py"))
from browser import assert_png_not_blank, set_viewport, start_browser  # noqa: E402

LOAD_SECONDS = int(os.environ.get("LOAD_SECONDS", "90"))


def post(http, path, body):
    req = urllib.request.Request(
        f"http://{http}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def main():
    http, kafka, native, weir, out = sys.argv[1:6]
    from kafka import KafkaConsumer, KafkaProducer

    for topic in ({"name": "orders", "partitions": 3}, {"name": "clicks", "partitions": 6, "durability": "never"}):
        try:
            post(http, "/topics", topic)
        except urllib.error.HTTPError as e:
            if e.code != 409:  # made already (the pipeline's source may have made it)
                raise
    stop = threading.Event()

    def http_load():
        n = 0
        while not stop.wait(0.1):
            recs = [
                {"key": f"customer-{(n + i) % 40}", "value": {"order": n + i, "qty": (n + i) % 7 + 1, "sku": f"sku-{(n + i) % 13}"},
                 "headers": {"source": "web"}}
                for i in range(20)
            ]
            post(http, "/topics/orders/records", {"records": recs})
            n += 20

    def kafka_load():
        p = KafkaProducer(bootstrap_servers=kafka, linger_ms=5)
        i = 0
        while not stop.is_set():
            for _ in range(100):
                p.send("clicks", key=f"page-{i % 50}".encode(), value=json.dumps({"page": i % 50, "ms": i % 900}).encode())
                i += 1
            time.sleep(0.05)
        p.flush()
        p.close()

    def native_load():
        while not stop.is_set():
            subprocess.run(
                [weir, "bench", "produce", "--addr", native, "--topic", "clicks", "--messages", "1500",
                 "--size", "200", "--batch", "50", "--output", "json"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )
            stop.wait(0.5)

    def bulk_load():
        # Over its quota (200 KB/s): shows on the Flow page.
        p = KafkaProducer(bootstrap_servers=kafka, client_id="bulk-loader", linger_ms=5)
        while not stop.is_set():
            for _ in range(20):
                p.send("clicks", value=b"b" * 20_000)
            p.flush()
        p.close()

    def group():
        c = KafkaConsumer("orders", bootstrap_servers=kafka, group_id="billing",
                          enable_auto_commit=False, auto_offset_reset="earliest")
        until = time.time() + LOAD_SECONDS * 0.6
        while time.time() < until:
            c.poll(timeout_ms=500)
            c.commit()
        # Stops reading: the lag grows from here, its member still in the group.
        while not stop.wait(1):
            c.poll(timeout_ms=0, max_records=1)
        c.close()

    threads = [threading.Thread(target=f, daemon=True) for f in (http_load, kafka_load, native_load, bulk_load, group)]
    for t in threads:
        t.start()
    d = start_browser(1280, 800)
    try:
        d.get(f"http://{http}/console/#/groups/billing")
        time.sleep(LOAD_SECONDS)

        def shot(name):
            path = os.path.join(out, f"{name}.png")
            d.save_screenshot(path)
            print(name, assert_png_not_blank(path, 16), flush=True)

        shot("group")
        for name, route in (("overview", ""), ("topics", "#/topics"), ("topic", "#/topics/orders")):
            d.get(f"http://{http}/console/{route}")
            time.sleep(3)
            shot(name)
        for name, route in (("flow", "#/flow"), ("pipeline", "#/pipelines/enrich")):
            d.get(f"http://{http}/console/{route}")
            time.sleep(3)
            shot(name)
        d.get(f"http://{http}/console/#/messages?topic=orders&partition=0")
        time.sleep(1)
        d.find_element("id", "msg-path").send_keys("sku")
        d.find_element("id", "msg-equals").send_keys("sku-3")
        d.find_element("id", "msg-read").click()
        time.sleep(2)
        shot("messages")
        d.get(f"http://{http}/console/")
        time.sleep(2)
        d.find_element("id", "theme").click()
        if d.execute_script("return document.documentElement.dataset.theme") != "dark":
            d.find_element("id", "theme").click()
        time.sleep(1.5)
        shot("overview-dark")
        d.find_element("id", "theme").click()
        set_viewport(d, 390, 844)
        time.sleep(1.5)
        shot("overview-phone")
    finally:
        stop.set()
        d.quit()
        for t in threads:
            t.join(timeout=10)


if __name__ == "__main__":
    main()
