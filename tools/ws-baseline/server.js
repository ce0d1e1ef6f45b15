// A bare WebSocket broadcast server, the comparison for scripts/bench-ws-fanout: the same
// protocol subset that tools/ws-fanout speaks to weir (subscribe op, `subscribed` reply,
// records POSTed as JSON to /topics/<topic>/records, pushed as JSON text frames), with no log,
// no queues and no overflow policy: each record is framed once and sent to every subscriber
// with the `ws` library, one write per frame, as a typical Node.js fan-out does.
//
// Usage: node server.js  (prints `http=127.0.0.1:PORT` once listening on a free port)
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const subscribers = new Set();
let offset = 0;

const server = http.createServer((req, res) => {
  const m = /^\/topics\/([^/]+)\/records$/.exec(req.url || "");
  if (req.method !== "POST" || !m) {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch (e) {
      res.writeHead(400, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: String(e) }));
      return;
    }
    const topic = decodeURIComponent(m[1]);
    const now = Date.now();
    const first = offset;
    for (const r of body.records || []) {
      const frame = JSON.stringify({
        type: "record", topic, partition: 0, offset: offset++, timestamp: now,
        key: r.key ?? null, value: r.value ?? null, headers: {},
      });
      for (const ws of subscribers) ws.send(frame);
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ base_offset: first, count: offset - first }));
  });
});

const wss = new WebSocketServer({ server, path: "/ws", perMessageDeflate: false });
wss.on("connection", (ws) => {
  ws.on("message", (data) => {
    let op;
    try {
      op = JSON.parse(data.toString());
    } catch {
      return;
    }
    if (op.op === "subscribe") {
      subscribers.add(ws);
      ws.send(JSON.stringify({ type: "subscribed", subscription: 1 }));
    }
  });
  ws.on("close", () => subscribers.delete(ws));
  ws.on("error", () => subscribers.delete(ws));
});

server.listen(0, "127.0.0.1", () => {
  console.log(`http=127.0.0.1:${server.address().port}`);
});
