"""Web consoles that can be opened and closed on a weir server, for scripts/bench-console.

    Feeds(http, n)      n consoles as the server sees them: each holds the live feed
                        (/console/live) and polls what the Topics and Groups pages poll
    Browsers(http, n)   n headless Chromium browsers, started once on a blank page; open()
                        takes each to the Overview, close() back to the blank page (so what
                        is measured is the console, not Chromium itself)

Each has open() and close(), which do nothing when it is open or closed already.

`Feeds` needs nothing but Python; `Browsers` needs selenium and Debian's chromium and
chromium-driver (the test venv, target/pyenv, has selenium).
"""

import os
import sys
import threading
import time
import urllib.request


def _feed(http, stop):
    """One console: the live feed read as it comes, /topics and /groups every 2 s."""
    stream = urllib.request.urlopen(f"http://{http}/console/live", timeout=30)

    def read():
        # Closed here, by its reader, once the next sample (a second at most) came after stop.
        with stream:
            while not stop.is_set() and stream.readline():
                pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not stop.wait(2):
        for path in ("/topics", "/groups"):
            with urllib.request.urlopen(f"http://{http}{path}", timeout=10) as r:
                r.read()
    reader.join(timeout=5)


class Feeds:
    def __init__(self, http, n):
        self.http, self.n = http, n
        self.stop = None
        self.threads = []

    def open(self):
        if self.threads:
            return
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=_feed, args=(self.http, self.stop), daemon=True)
            for _ in range(self.n)
        ]
        for t in self.threads:
            t.start()

    def close(self):
        if self.stop:
            self.stop.set()
            for t in self.threads:
                t.join(timeout=5)
        self.threads = []

    def quit(self):
        self.close()


class Browsers:
    def __init__(self, http, n):
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../crates/weir/tests/py"))
        from browser import start_browser

        self.http = http
        self.drivers = []
        self.opened = False
        try:
            for _ in range(n):
                self.drivers.append(start_browser(1280, 800))
        except BaseException:
            self.quit()
            raise
        self.close()

    def open(self):
        if self.opened:
            return
        self.opened = True
        for d in self.drivers:
            d.get(f"http://{self.http}/console/")
        for d in self.drivers:
            deadline = time.time() + 20
            while d.execute_script("return document.getElementById('feed-state').textContent") != "live":
                if time.time() > deadline:
                    raise SystemExit("a console did not get its live feed")
                time.sleep(0.1)

    def close(self):
        self.opened = False
        for d in self.drivers:
            d.get("about:blank")

    def quit(self):
        for d in self.drivers:
            d.quit()
        self.drivers = []
