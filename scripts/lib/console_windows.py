"""Measures what open web consoles cost a producer that is already running, for
scripts/bench-console: windows with CONSOLES consoles open and windows with none alternate
(in pairs, ordered off-on then on-off, so that a drift of the machine falls on both alike),
and each window's produce rate is read from the topic's high watermarks over the HTTP door.

    console_windows.py MODE HTTP TOPIC CONSOLES PAIRS SETTLE_S WINDOW_S

MODE is `feeds` or `browsers` (scripts/lib/console_load.py). Prints one JSON line per window,
then one summary line: the median and the mean of the pairs' ratios (open / none) with a 95%
bootstrap interval of the mean.
"""

import json
import random
import statistics
import sys
import time
import urllib.request

from console_load import Browsers, Feeds


def written(http, topic):
    with urllib.request.urlopen(f"http://{http}/topics/{topic}", timeout=10) as r:
        return sum(p["high_watermark"] for p in json.load(r)["partitions"])


def window(http, topic, settle, length):
    """Records per second written over `length` seconds, after `settle` seconds."""
    time.sleep(settle)
    a, t0 = written(http, topic), time.monotonic()
    time.sleep(length)
    b, t1 = written(http, topic), time.monotonic()
    return (b - a) / (t1 - t0)


def interval(ratios, draws=10_000, seed=1):
    """The 2.5th and 97.5th percentiles of the mean over bootstrap resamples."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def main():
    mode, http, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    consoles, pairs = int(sys.argv[4]), int(sys.argv[5])
    settle, length = float(sys.argv[6]), float(sys.argv[7])
    load = Feeds(http, consoles) if mode == "feeds" else Browsers(http, consoles)
    ratios = []
    try:
        for i in range(pairs):
            rates = {}
            for state in ("none", "open") if i % 2 == 0 else ("open", "none"):
                if state == "open":
                    load.open()
                else:
                    load.close()
                rates[state] = window(http, topic, settle, length)
                print(json.dumps({"mode": mode, "pair": i, "consoles": state, "records_per_sec": round(rates[state])}), flush=True)
            ratios.append(rates["open"] / rates["none"])
    finally:
        load.quit()
    low, high = interval(ratios)
    print(json.dumps({
        "mode": mode,
        "consoles": consoles,
        "pairs": pairs,
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_mean": round(statistics.fmean(ratios), 4),
        "ratio_mean_95": [round(low, 4), round(high, 4)],
    }), flush=True)


if __name__ == "__main__":
    main()
