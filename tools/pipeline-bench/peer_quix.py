#!/usr/bin/env python3
"""The Python peer of scripts/bench-pipeline: the same job as the weir pipeline, written with
Quix Streams (quixstreams on PyPI, a Kafka stream-processing library on confluent-kafka /
librdkafka) against weir's own Kafka listener.

    peer_quix.py BROKER N [--input bench-in] [--output bench-out-peer] [--group peer]

Reads INPUT from the start as consumer group GROUP, and for each event: parses the JSON
(Quix's JSON deserializer), renames `user` to `user_id`, turns `amount` into a float, adds
`pipeline = "weir"`, keeps it when `amount > 25.0`, and writes it as JSON to OUTPUT. Stops by
itself once it has taken N input events (Quix then flushes its producer and commits), and
prints one JSON line: input events, events kept, elapsed seconds and CPU seconds (user +
system, every thread of the process: Python and librdkafka's) from the first event taken to
the end, and the process's peak RSS.
"""

import argparse
import json
import logging
import resource
import sys
import time

from quixstreams import Application


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    p = argparse.ArgumentParser()
    p.add_argument("broker")
    p.add_argument("n", type=int)
    p.add_argument("--input", default="bench-in")
    p.add_argument("--output", default="bench-out-peer")
    p.add_argument("--group", default="peer")
    a = p.parse_args()

    app = Application(
        broker_address=a.broker,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        loglevel=logging.WARNING,
    )
    source = app.topic(a.input, value_deserializer="json")
    sink = app.topic(a.output, value_serializer="json")

    state = {"seen": 0, "kept": 0, "t0": None, "cpu0": None}

    def take(v):
        if state["t0"] is None:
            state["t0"], state["cpu0"] = time.monotonic(), cpu_seconds()
        state["seen"] += 1
        if state["seen"] == a.n:
            # Ends the poll loop after this event; the run then flushes and commits.
            app.stop()
        return v

    def shape(v):
        v["user_id"] = v.pop("user", None)
        v["amount"] = float(v["amount"])
        v["pipeline"] = "weir"
        return v

    def keep(v):
        if v["amount"] > 25.0:
            state["kept"] += 1
            return True
        return False

    sdf = app.dataframe(source)
    sdf = sdf.apply(take).apply(shape).filter(keep)
    sdf.to_topic(sink)
    app.run()
    if state["t0"] is None:
        sys.exit("no events were read")
    elapsed = time.monotonic() - state["t0"]
    cpu = cpu_seconds() - state["cpu0"]
    print(json.dumps({
        "events": state["seen"],
        "kept": state["kept"],
        "elapsed_s": round(elapsed, 3),
        "cpu_s": round(cpu, 3),
        "events_per_sec": round(state["seen"] / elapsed),
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "quixstreams": __import__("quixstreams").__version__,
    }))
    if state["seen"] < a.n:
        sys.exit(f"stopped after {state['seen']} of {a.n} events")


if __name__ == "__main__":
    main()
