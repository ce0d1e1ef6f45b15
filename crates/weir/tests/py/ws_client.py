"""A WebSocket client for weir's integration tests, on the `websockets` library.

Connects to --url, sends each --send operation (JSON), and prints every frame it receives as
one line on stdout, then a final line {"type": "_end", "why": ..., "code": ..., "reason": ...}.

--records N     stop after N record frames
--timeout S     stop after S seconds in all
--pause         after the first "subscribed" frame, print it and stop reading until a line
                arrives on stdin (a client that stops reading)
--rcvbuf BYTES  a small socket receive buffer, so a paused client pushes back at once
"""

import argparse
import asyncio
import json
import socket
import sys
import time
from urllib.parse import urlparse

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--send", action="append", default=[])
    ap.add_argument("--records", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--pause", action="store_true")
    ap.add_argument("--rcvbuf", type=int, default=0)
    args = ap.parse_args()

    u = urlparse(args.url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if args.rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    sock.connect((u.hostname, u.port))
    deadline = time.monotonic() + args.timeout
    records = 0
    end = {"type": "_end", "why": "timeout", "code": None, "reason": None}
    async with connect(
        args.url,
        sock=sock,
        ping_interval=None,
        max_queue=1 if args.pause else 64,
        max_size=None,
    ) as ws:
        for op in args.send:
            await ws.send(op)
        paused = not args.pause
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    frame = await asyncio.wait_for(ws.recv(), timeout=left)
                except asyncio.TimeoutError:
                    break
                msg = json.loads(frame)
                out(msg)
                if msg.get("type") == "record":
                    records += 1
                    if args.records and records >= args.records:
                        end["why"] = "count"
                        break
                if not paused and msg.get("type") == "subscribed":
                    paused = True
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(None, sys.stdin.readline)
                    deadline = time.monotonic() + args.timeout
        except ConnectionClosed as e:
            end["why"] = "closed"
            if e.rcvd is not None:
                end["code"] = e.rcvd.code
                end["reason"] = e.rcvd.reason
    out(end)


asyncio.run(main())
