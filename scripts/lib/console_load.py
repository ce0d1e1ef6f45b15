"""Opens N web consoles on a weir server and keeps them open until stdin closes, for
scripts/bench-console. Prints "ready" once every console has its live feed.

    console_load.py feeds HTTP N      # N consoles as the server sees them: each holds the live
                                      # feed and polls what the Topics and Groups pages poll
    console_load.py browsers HTTP N   # N headless Chromium browsers on the Overview page

`feeds` needs nothing but Python; `browsers` needs selenium and Debian's chromium and
chromium-driver (the test venv, target/pyenv, has selenium).
"""

import os
import sys
import threading
import time
import urllib.request


def feed(http, stop):
    """One console: the live feed read as it comes, /topics every 2 s, /groups every 2 s."""
    stream = urllib.request.urlopen(f"http://{http}/console/live", timeout=30)

    def read():
        while not stop.is_set() and stream.readline():
            pass

    threading.Thread(target=read, daemon=True).start()
    while not stop.wait(2):
        for path in ("/topics", "/groups"):
            with urllib.request.urlopen(f"http://{http}{path}", timeout=10) as r:
                r.read()
    stream.close()


def main():
    mode, http, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stop = threading.Event()
    if mode == "feeds":
        threads = [threading.Thread(target=feed, args=(http, stop), daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        print("ready", flush=True)
        sys.stdin.read()
        stop.set()
        return
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../crates/weir/tests/py"))
    from browser import start_browser

    drivers = []
    try:
        for _ in range(n):
            d = start_browser(1280, 800)
            drivers.append(d)
            d.get(f"http://{http}/console/")
        for d in drivers:
            deadline = time.time() + 20
            while d.execute_script("return document.getElementById('feed-state').textContent") != "live":
                if time.time() > deadline:
                    raise SystemExit("a console did not get its live feed")
                time.sleep(0.1)
        print("ready", flush=True)
        sys.stdin.read()
    finally:
        for d in drivers:
            d.quit()


if __name__ == "__main__":
    main()
