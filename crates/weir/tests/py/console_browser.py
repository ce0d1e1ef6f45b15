"""Drives weir's web console in a real browser (headless Chromium through Selenium) against a
running server, and fails (exit status 1, the reason on stderr) at the first thing that is
not as it should be. Run by crates/weir/tests/it/console.rs, which starts the server.

    console_browser.py --http HOST:PORT --kafka HOST:PORT --shots DIR
    console_browser.py --http HOST:PORT --shots DIR --token TOKEN   # a server with auth

Every page is checked for browser console errors (failed loads, exceptions, console.error),
and screenshotted at 1280x800 (and the overview at a phone's 390x844) into DIR, each checked
to be more than one colour.
"""

import argparse
import base64
import json
import os
import struct
import sys
import time
import urllib.request

from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from browser import assert_png_not_blank, console_errors, set_viewport, start_browser

WAIT = 20


class Console:
    def __init__(self, http, shots, token=None):
        self.base = f"http://{http}"
        self.shots = shots
        self.token = token
        self.driver = start_browser(1280, 800)

    def api(self, method, path, body=None):
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
        return json.loads(text) if text else None

    def produce(self, topic, records):
        return self.api("POST", f"/topics/{topic}/records", {"records": records})

    def go(self, hash_):
        self.driver.get(f"{self.base}/console/{hash_}")

    def until(self, what, condition, timeout=WAIT):
        # The page redraws every second: an element found may be replaced before it is read.
        wait = WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        try:
            return wait.until(lambda d: condition())
        except TimeoutException as e:
            raise AssertionError(f"timed out waiting for {what}") from e

    def find(self, css):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css):
        """The rendered text of the first element matching css, read in one step."""
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css
        )

    def no_errors(self, where):
        errors = console_errors(self.driver)
        assert not errors, f"browser console errors on {where}: {errors}"

    def shot(self, name):
        path = os.path.join(self.shots, f"{name}.png")
        self.driver.save_screenshot(path)
        width, height, colors = assert_png_not_blank(path, min_colors=16)
        print(f"screenshot {name}: {width}x{height}, {colors} colours", flush=True)

    def live(self):
        self.until("the live feed", lambda: self.text("#feed-state") == "live")


def line_values(console, series_class, chart_title):
    """The y values (SVG units, larger is lower) of one series of the chart titled so."""
    return console.driver.execute_script(
        """
        const [cls, title] = arguments;
        for (const fig of document.querySelectorAll('figure.chart')) {
          if (!fig.querySelector('figcaption').textContent.startsWith(title)) continue;
          const pts = fig.querySelector('polyline.' + cls).getAttribute('points') || '';
          return pts.split(' ').filter(Boolean).map(p => Number(p.split(',')[1]));
        }
        return null;
        """,
        series_class,
        chart_title,
    )


def overview(c):
    c.go("")
    c.live()
    c.until("the overview's cards", lambda: c.finds("[data-card='records-in']"))
    # Records written through the HTTP door show in its series of the records chart: some
    # point above the zero line.
    c.produce("orders", [{"key": f"burst-{i}", "value": "x"} for i in range(40)])
    c.until(
        "the HTTP door's records in the chart",
        lambda: any(y < 140 for y in (line_values(c, "s3", "Records in per second") or [])),
    )
    # The charts move on by themselves, a sample a second.
    before = line_values(c, "s1", "Connections")
    c.until("the charts to update", lambda: line_values(c, "s1", "Connections") != before, 5)
    topics = c.text("[data-card='topics']")
    assert topics.startswith("1 /") or topics.startswith("2 /"), topics
    c.no_errors("the overview")
    c.shot("overview")
    print("overview: live, charts updating", flush=True)


def topics(c):
    c.go("#/topics")
    row = "tr[data-topic='orders']"
    c.until("the orders row", lambda: c.finds(row))
    expected = sum(
        p["high_watermark"] - p["log_start_offset"] for p in c.api("GET", "/topics/orders")["partitions"]
    )
    c.until(
        f"orders to show {expected} records",
        lambda: c.find(f"{row} td:nth-child(3)").text == str(expected),
    )
    # Create through the form.
    c.find("#new-topic-name").send_keys("made-in-browser")
    partitions = c.find("#new-topic-partitions")
    partitions.clear()
    partitions.send_keys("3")
    c.find("form[aria-label='Create a topic'] button[type=submit]").click()
    made = "tr[data-topic='made-in-browser']"
    c.until("the new topic's row", lambda: c.finds(made))
    assert c.find(f"{made} td:nth-child(2)").text == "3"
    assert len(c.api("GET", "/topics/made-in-browser")["partitions"]) == 3
    c.shot("topics")
    # Delete: a wrong name deletes nothing, the right one deletes.
    c.find(f"{made} button.danger").click()
    c.until("the confirmation", lambda: c.find("#confirm-dialog").get_attribute("open") is not None)
    c.find("#confirm-input").send_keys("made-in-browse")
    c.find("#confirm-ok").click()
    time.sleep(2.5)
    assert c.finds(made), "deleted without the right name"
    c.find(f"{made} button.danger").click()
    c.until("the confirmation", lambda: c.find("#confirm-dialog").get_attribute("open") is not None)
    c.find("#confirm-input").send_keys("made-in-browser")
    c.find("#confirm-ok").click()
    c.until("the row to go", lambda: not c.finds(made))
    names = [t["name"] for t in c.api("GET", "/topics")["topics"]]
    assert "made-in-browser" not in names, names
    c.no_errors("the topics page")
    # The topic's own page: its partitions and offsets.
    c.go("#/topics/orders")
    parts = c.api("GET", "/topics/orders")["partitions"]
    c.until(
        "the partitions' high watermarks",
        lambda: [r.find_elements(By.CSS_SELECTOR, "td")[2].text for r in c.finds("#partitions-table tbody tr")]
        == [str(p["high_watermark"]) for p in parts],
    )
    c.no_errors("the topic page")
    c.shot("topic")
    print("topics: listed, created, deleted after confirmation, partitions shown", flush=True)


def messages(c):
    # A record to find by key among many.
    c.produce(
        "orders",
        [{"key": f"k{i}", "value": json.dumps({"n": i, "tag": "t%d" % (i % 3)}), "partition": 0} for i in range(60)],
    )
    c.go("#/messages?topic=orders&partition=0")
    c.until("the topic list", lambda: "orders" in c.find("#msg-topic").text)
    c.find("#msg-key").send_keys("k42")
    c.find("#msg-read").click()
    c.until("the reading to finish", lambda: "(the end)" in (c.text("#msg-status") or ""))
    rows = c.finds("#messages-table tbody tr")
    assert len(rows) == 1, f"{len(rows)} rows for key k42"
    cells = [td.text for td in rows[0].find_elements(By.CSS_SELECTOR, "td")]
    assert cells[2] == "k42" and json.loads(cells[4]) == {"n": 42, "tag": "t0"}, cells
    # By a JSON field, shown as hex.
    c.find("#msg-key").clear()
    c.find("#msg-path").send_keys("tag")
    c.find("#msg-equals").send_keys("t2")
    Select(c.find("#msg-format")).select_by_value("hex")
    c.find("#msg-read").click()
    c.until("the reading to finish", lambda: "(the end)" in (c.text("#msg-status") or ""))
    rows = c.finds("#messages-table tbody tr")
    assert len(rows) == 20, f"{len(rows)} rows with tag t2"
    first = rows[0].find_elements(By.CSS_SELECTOR, "td")[4].text
    assert first.startswith("7b 22 6e 22"), first  # {"n"
    c.shot("messages")
    # Live tail: from the end, then a record produced from the page itself arrives.
    Select(c.find("#msg-format")).select_by_value("auto")
    c.find("#msg-path").clear()
    c.find("#msg-equals").clear()
    Select(c.find("#msg-from")).select_by_value("end")
    c.find("#msg-read").click()
    c.until("the live tail", lambda: (c.text("#msg-status") or "").startswith("Live"))
    c.find("#produce-key").send_keys("from-the-browser")
    c.find("#produce-value").send_keys("hello from the console")
    c.find("#produce-headers").send_keys("origin=console")
    c.find("#produce-send").click()
    c.until(
        "the produced record in the live tail",
        lambda: any(
            "hello from the console" in r.text and "origin=console" in r.text
            for r in c.finds("#messages-table tbody tr")
        ),
    )
    c.find("#msg-stop").click()
    c.no_errors("the message browser")
    print("messages: found by key and by JSON field, hex, live tail, produced", flush=True)


def reading(sensor, celsius, at):
    """A plant.Reading (sensor = 1, celsius = 2, at = 3), encoded by hand as any Protobuf
    library would write it."""
    s = sensor.encode()
    out = bytes([0x0A, len(s)]) + s + b"\x11" + struct.pack("<d", celsius) + b"\x18"
    while at >= 0x80:
        out += bytes([(at & 0x7F) | 0x80])
        at >>= 7
    return out + bytes([at])


def schema(c):
    """console.rs declares [schemas.readings]: plant.Reading. The message browser shows its
    values decoded, and filters on the decoded message's fields."""
    c.api("POST", "/topics", {"name": "readings", "partitions": 1})
    values = [reading(f"s{i}", 20.0 + i, 1_700_000_000_000 + i) for i in range(5)]
    c.produce("readings", [{"value_base64": base64.b64encode(v).decode()} for v in values])
    c.go("#/messages?topic=readings&partition=0")
    c.until("the schema named", lambda: "plant.Reading" in (c.text("#msg-schema") or ""))
    c.until("the reading to finish", lambda: "(the end)" in (c.text("#msg-status") or ""))
    rows = c.finds("#messages-table tbody tr")
    assert len(rows) == 5, f"{len(rows)} rows"
    first = json.loads(rows[0].find_elements(By.CSS_SELECTOR, "td")[4].text)
    assert first == {"sensor": "s0", "celsius": 20, "at": "1700000000000"}, first
    c.find("#msg-path").send_keys("sensor")
    c.find("#msg-equals").send_keys("s3")
    Select(c.find("#msg-format")).select_by_value("protobuf")
    c.find("#msg-read").click()
    c.until("the filtered reading", lambda: "1 shown of 5" in (c.text("#msg-status") or ""))
    shown = c.find("#messages-table tbody tr td:nth-child(5)").text
    assert '"celsius": 23' in shown, shown
    c.no_errors("the message browser with a schema")
    print("schema: Protobuf values decoded and filtered by field", flush=True)


def sampled_lag(c):
    """The server's samples of group console-readers' lag, of every topic, oldest first."""
    history = c.api("GET", "/groups/console-readers/lag")
    assert history["period_s"] == 5, history
    return [lag for t in history["topics"] for _, lag in t["points"]]


def groups(c, kafka):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=kafka,
        group_id="console-readers",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2000,
    )
    try:
        consumer.subscribe(["orders"])

        def drain():
            deadline = time.time() + 20
            while time.time() < deadline:
                consumer.poll(timeout_ms=500)
                ends = consumer.end_offsets([TopicPartition("orders", p) for p in (0, 1)])
                if all(consumer.position(tp) >= end for tp, end in ends.items() if tp in consumer.assignment()) and consumer.assignment():
                    consumer.commit()
                    return
            raise AssertionError("the Kafka consumer did not catch up")

        drain()
        c.go("#/groups")
        c.until("the group's row", lambda: c.finds("tr[data-group='console-readers']"))
        c.go("#/groups/console-readers")
        lag = lambda: c.text("[data-card='group-lag']")  # noqa: E731
        c.until("lag 0 after the group caught up", lambda: lag() == "0")
        members = c.finds("#members-table tbody tr")
        assert len(members) == 1 and "orders" in members[0].text, [m.text for m in members]
        # Lag rises while the group does not read...
        c.produce("orders", [{"value": f"late-{i}", "partition": i % 2} for i in range(30)])
        c.until("lag 30", lambda: lag() == "30")
        c.shot("group")
        # ...and falls when it has read and committed.
        drain()
        c.until("lag back to 0", lambda: lag() == "0")
        chart = line_values(c, "s2", "Lag")
        assert chart and min(chart) < max(chart), f"the lag chart did not move: {chart}"
        assert c.find("#reset").get_attribute("hidden") is not None, "reset offered with a member"
        # The server samples the group's lag itself, every 5 s: one sample before the reset.
        c.until("the server's lag sample before the reset", lambda: sampled_lag(c), timeout=30)
        # Once the member has left, the group is moved back to the start from the page.
        consumer.close()
        c.until("the reset form", lambda: c.find("#reset").get_attribute("hidden") is None)
        Select(c.find("#reset-topic")).select_by_value("orders")
        Select(c.find("#reset-to")).select_by_value("earliest")
        c.find("#reset-go").click()
        c.until("the confirmation", lambda: c.find("#confirm-dialog").get_attribute("open") is not None)
        c.find("#confirm-input").send_keys("console-readers")
        c.find("#confirm-ok").click()
        total = sum(p["high_watermark"] - p["log_start_offset"] for p in c.api("GET", "/topics/orders")["partitions"])
        c.until(f"lag {total} after the reset", lambda: lag() == str(total))
        committed = [o["committed"] for o in c.api("GET", "/groups/console-readers")["offsets"]]
        assert committed == [0, 0], committed

        # A page opened now draws the lag from before it opened: the server's samples from
        # before the reset as well as after it.
        c.until("the server's lag sample after the reset", lambda: total in sampled_lag(c))
        c.driver.refresh()
        c.until("the lag chart drawn", lambda: len(line_values(c, "s2", "Lag") or []) >= 2)
        chart = line_values(c, "s2", "Lag")
        assert min(chart) < max(chart), f"the chart did not start from the server's samples: {chart}"
        c.no_errors("the group page")
    finally:
        consumer.close()
    print("groups: member, assignment, lag rising then falling, reset to earliest", flush=True)


def flow(c, kafka):
    """The server runs with a produce quota of 100 KiB/s per client (console.rs)."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=kafka, client_id="noisy-producer", linger_ms=0)
    try:
        for i in range(40):
            p.send("orders", value=b"x" * 10_000, partition=i % 2)
        p.flush(timeout=60)
    finally:
        p.close()
    c.go("#/flow")
    c.live()
    row = "tr[data-client='noisy-producer']"
    c.until("the throttled client", lambda: c.finds(row))
    cells = c.text(row).split("\t")
    assert cells[1] == "produce" and int(cells[2]) >= 1, cells
    c.until("the throttles counted", lambda: (c.text("[data-card='flow-throttles']") or "0") != "0")
    limits = c.text("#limits-table")
    assert "100.0 KiB/s" in limits and "unlimited" in limits, limits
    # console.rs holds a native drop-oldest subscriber with a 100-record queue that never
    # reads, past which 10,000 records were produced.
    stalled = "tr[data-push='native/drop_oldest']"
    c.until("the stalled subscriber", lambda: c.finds(stalled))
    cells = c.text(stalled).split("\t")
    assert cells[2] == "1" and int(cells[4]) >= 1000, cells
    assert c.text("tr[data-push='native/credit']").split("\t")[4] == "0"
    # Every client of this test is on 127.0.0.1: this page's, kafka-python's, the native one.
    local = "tr[data-address='127.0.0.1']"
    c.until("this address's connections", lambda: c.finds(local))
    assert int(c.text(local).split("\t")[1]) >= 2, c.text(local)
    assert "addresses connected" in c.text("#addresses-note"), c.text("#addresses-note")
    c.no_errors("the flow page")
    c.shot("flow")
    print("flow: the throttled client and the limits shown", flush=True)


def pipeline(c):
    """The server declares pipeline `copy`: topic events -> remap `tag` -> topic sink `out`."""
    c.produce("events", [{"value": json.dumps({"n": i})} for i in range(50)])
    c.go("#/pipelines")
    row = "tr[data-pipeline='copy']"
    c.until("the pipeline's row", lambda: c.finds(row))
    c.until("the pipeline running", lambda: "running" in (c.text(row) or ""))
    c.go("#/pipelines/copy")
    sent = "#components-table tr[data-component='out'] td:nth-child(5)"
    c.until("the sink's 50 records", lambda: c.text(sent) == "50")
    nodes = [n.get_attribute("data-component") for n in c.finds("#pipeline-graph g.node")]
    assert sorted(nodes) == ["in", "out", "tag"], nodes
    assert len(c.finds("#pipeline-graph line.edge")) == 2
    # The topic source saves its position every second, and has read records stamped now.
    row = "#components-table tr[data-component='in']"
    c.until("the source's checkpoint age", lambda: c.text(row).split("\t")[9].endswith(" s"))
    age = float(c.text(row).split("\t")[9].split()[0])
    assert age < 10, c.text(row)
    watermark = c.text(row).split("\t")[10]
    assert watermark.endswith(" s behind"), watermark  # under a minute
    node = c.driver.execute_script(
        "return document.querySelector(\"#pipeline-graph g.node[data-component='in']\").textContent"
    )
    assert "ckpt" in node and "wm " in node and " behind" in node, node
    c.shot("pipeline")
    state = "[data-card='pipeline-state']"
    c.find("#pipeline-stop").click()
    c.until("the pipeline stopped", lambda: c.text(state) == "stopped")
    c.find("#pipeline-start").click()
    c.until("the pipeline running again", lambda: c.text(state) == "running")
    c.no_errors("the pipeline pages")
    print("pipelines: listed, drawn, counted, stopped and started", flush=True)


def phone_and_dark(c):
    set_viewport(c.driver, 390, 844)
    c.go("")
    c.live()
    c.until("the overview's cards", lambda: c.finds("[data-card='records-in']"))
    width = c.driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide at a phone's 390"
    c.shot("overview-phone")
    set_viewport(c.driver, 1280, 800)
    c.find("#theme").click()
    theme = c.driver.execute_script("return document.documentElement.dataset.theme")
    assert theme in ("dark", "light"), theme
    if theme == "light":
        c.find("#theme").click()
    background = c.driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(18, 20, 24)", background
    c.shot("overview-dark")
    c.find("#theme").click()
    c.no_errors("the phone and dark views")
    print("phone width and dark theme", flush=True)


def with_token(c):
    # No token yet: the page asks for one, and shows data once given it.
    c.go("#/topics")
    c.until("the sign-in dialog", lambda: c.find("#token-dialog").get_attribute("open") is not None)
    c.find("#token-input").send_keys(c.token)
    c.find("#token-form button[value=save]").click()
    c.until("the topics", lambda: c.finds("tr[data-topic='orders']"))
    c.go("")
    c.live()
    # The 401s before the token were expected; nothing else may have failed.
    errors = [e for e in console_errors(c.driver) if "401" not in e]
    assert not errors, errors
    c.shot("overview-signed-in")
    print("authentication: asked for a token, then live", flush=True)


def shown_sections(c):
    return c.driver.execute_script(
        "return [...document.querySelectorAll('[data-nav]')]"
        ".filter((a) => !a.parentElement.hidden).map((a) => a.dataset.nav)"
    )


def limited(c):
    """Signed in as a user who may describe and read topic `orders` only: the console offers
    the topics and the message browser and nothing else, and lists only that topic."""
    c.go("")
    c.driver.execute_script("sessionStorage.setItem('weir-token', arguments[0])", c.token)
    c.driver.refresh()
    # The overview is not hers: she is taken to the first section she may see.
    c.until("the topic she may see", lambda: c.finds("tr[data-topic='orders']"))
    assert c.driver.current_url.endswith("#/topics"), c.driver.current_url
    assert shown_sections(c) == ["topics", "messages"], shown_sections(c)
    assert c.text("#who") == "alice", c.text("#who")
    assert not c.finds("tr[data-topic='secret']"), "a hidden topic is listed"
    assert not c.finds("#new-topic-name"), "she may not create topics, yet the form is offered"
    assert not c.finds("tr[data-topic='orders'] button.danger"), "she may not delete, yet may click"
    c.until("the refusal said", lambda: c.text("#feed-state") == "no access to server figures")
    c.go("#/flow")
    c.until("the way back to what she may see", lambda: c.driver.current_url.endswith("#/topics"))
    c.go("#/messages?topic=orders&partition=0")
    c.until("a record of orders", lambda: c.finds("#messages-table tbody tr[data-offset]"))
    assert not c.finds("#produce-send"), "she may not write, yet the produce form is offered"
    # Refusals were expected (401 before the token was set, 403 after); nothing else.
    errors = [e for e in console_errors(c.driver) if "401" not in e and "403" not in e]
    assert not errors, errors
    c.shot("topics-limited")
    print("limited: no server figures, hidden topics left out", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True)
    ap.add_argument("--kafka")
    ap.add_argument("--shots", required=True)
    ap.add_argument("--token")
    ap.add_argument("--pipeline", action="store_true", help="only the pipeline pages")
    ap.add_argument("--limited", action="store_true", help="with --token of a user who may see little")
    a = ap.parse_args()
    os.makedirs(a.shots, exist_ok=True)
    c = Console(a.http, a.shots, a.token)
    try:
        if a.pipeline:
            pipeline(c)
            return
        if a.limited:
            limited(c)
            return
        c.api("POST", "/topics", {"name": "orders", "partitions": 2})
        c.produce("orders", [{"key": f"first-{i}", "value": "v"} for i in range(10)])
        if a.token:
            c.api("POST", "/topics", {"name": "secret", "partitions": 1})
            with_token(c)
            return
        overview(c)
        topics(c)
        messages(c)
        schema(c)
        groups(c, a.kafka)
        flow(c, a.kafka)
        phone_and_dark(c)
    except BaseException:
        # What the page showed when it went wrong.
        try:
            c.driver.save_screenshot(os.path.join(a.shots, "failure.png"))
            print(f"at failure: url {c.driver.current_url}, toast {c.text('#toast')!r}, "
                  f"status {c.text('#msg-status')!r}, browser errors {console_errors(c.driver)}",
                  file=sys.stderr)
        except Exception:
            pass
        raise
    finally:
        c.driver.quit()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
