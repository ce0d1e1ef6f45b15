// The weir console: one page, a view per `#/...` route, data from the server's JSON API and
// its live feed (/console/live). Every name and value shown comes from the network: it is
// only ever set as text (never as HTML).

import { LineChart, el as svg } from './chart.js';

// ---- small helpers ----

// An element: `attrs` sets properties (`text`, `class`, `on*` listeners, others as
// attributes); children are nodes or strings.
function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) e.append(c);
  }
  return e;
}

function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(2)}G`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (a >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  if (a >= 100 || Number.isInteger(v)) return String(Math.round(v));
  return v.toFixed(1);
}

function fmtBytes(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

function fmtDuration(s) {
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  return `${m}m ${Math.floor(s % 60)}s`;
}

function fmtTime(ms) {
  return new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC');
}

const DOORS = ['native', 'kafka', 'http'];

// A short message at the bottom of the page: an error unless `ok`.
function toast(message, ok = false) {
  const t = document.getElementById('toast');
  t.textContent = message;
  t.className = ok ? 'ok' : '';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.textContent = ''; }, 6000);
}

// ---- the API ----

let token = sessionStorage.getItem('weir-token') || '';

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(path, { ...options, headers });
  const isJson = (r.headers.get('content-type') || '').includes('json');
  const body = isJson ? await r.json() : await r.text();
  if (!r.ok) {
    const err = (isJson && body && body.error) || {};
    if (r.status === 401) askToken(err.message);
    throw new ApiError(r.status, err.code || String(r.status), err.message || `HTTP ${r.status}`);
  }
  return body;
}

function askToken(why) {
  const dialog = document.getElementById('token-dialog');
  if (why) document.getElementById('token-why').textContent = why;
  if (!dialog.open) dialog.showModal();
}

function setupToken() {
  const dialog = document.getElementById('token-dialog');
  document.getElementById('token-button').addEventListener('click', () => askToken());
  dialog.addEventListener('close', () => {
    const input = document.getElementById('token-input');
    if (dialog.returnValue === 'save' && input.value.trim()) {
      token = input.value.trim();
      sessionStorage.setItem('weir-token', token);
    } else if (dialog.returnValue === 'clear') {
      token = '';
      sessionStorage.removeItem('weir-token');
    }
    input.value = '';
    feed.restart();
    loadMe();
  });
}

// Asks the user to type `name` to confirm; resolves true when they did.
function confirmByName(text, name, action) {
  const dialog = document.getElementById('confirm-dialog');
  const input = document.getElementById('confirm-input');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-label').textContent = `Type “${name}” to confirm`;
  document.getElementById('confirm-ok').textContent = action;
  input.value = '';
  dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'ok' && input.value === name);
    }, { once: true });
  });
}

// ---- who is signed in ----

// What `/console/me` said: the sections and actions offered. Unknown (not loaded, or an older
// server): everything is offered, and the server still decides each request.
let me = null;

function sees(section) {
  return !me || me.sees[section] !== false;
}

function may(action) {
  return !me || me.may[action] !== false;
}

async function loadMe() {
  try {
    me = await api('/console/me');
  } catch (err) {
    me = null;
    if (err.status !== 401) toast(err.message);
  }
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.parentElement.hidden = !sees(a.dataset.nav);
  }
  const who = document.getElementById('who');
  who.textContent = me && me.checked ? me.principal.replace(/^User:/, '') : '';
  route();
}

// ---- the live feed ----

const HISTORY_MS = 15 * 60 * 1000;

const feed = {
  hello: null,
  samples: [],
  listeners: new Set(),
  source: null,
  retry: null,
  start() {
    const state = document.getElementById('feed-state');
    const url = token ? `/console/live?access_token=${encodeURIComponent(token)}` : '/console/live';
    const es = new EventSource(url);
    this.source = es;
    es.addEventListener('hello', (e) => { this.hello = JSON.parse(e.data); });
    es.addEventListener('history', (e) => {
      this.samples = JSON.parse(e.data);
      this.notify();
    });
    es.addEventListener('sample', (e) => {
      const s = JSON.parse(e.data);
      // A sample taken as the feed opened may be in the history too.
      if (this.samples.length && s.t <= this.samples[this.samples.length - 1].t) return;
      this.samples.push(s);
      const from = this.samples[this.samples.length - 1].t - HISTORY_MS;
      while (this.samples.length && this.samples[0].t < from) this.samples.shift();
      this.notify();
    });
    es.onopen = () => {
      state.textContent = 'live';
      state.className = 'feed live';
    };
    es.onerror = async () => {
      state.textContent = 'reconnecting…';
      state.className = 'feed';
      if (es.readyState !== EventSource.CLOSED) return;
      // Refused: the browser does not retry by itself, and does not say why. Ask once.
      clearTimeout(this.retry);
      const r = await fetch(url, { method: 'GET', headers: token ? { Authorization: `Bearer ${token}` } : {} })
        .catch(() => null);
      const status = r ? r.status : 0;
      if (r && r.body) r.body.cancel();
      if (status === 403) {
        // Not allowed to see the server's figures: said once, not retried.
        this.denied = true;
        state.textContent = 'no access to server figures';
        this.notify();
        return;
      }
      if (status === 401) askToken();
      this.retry = setTimeout(() => this.restart(), 3000);
    };
  },
  restart() {
    if (this.source) this.source.close();
    this.denied = false;
    this.start();
  },
  notify() {
    for (const f of this.listeners) f(this.samples);
  },
  // Calls `f` with the samples now and on each new one; returns the unsubscribe function.
  watch(f) {
    this.listeners.add(f);
    f(this.samples);
    return () => this.listeners.delete(f);
  },
};

// Per-second rates between consecutive samples of a counter picked by `get`. A counter that
// went down (the server restarted) gives no point.
function rates(samples, get) {
  const out = [];
  for (let i = 1; i < samples.length; i += 1) {
    const a = samples[i - 1];
    const b = samples[i];
    const dt = (b.t - a.t) / 1000;
    const d = get(b) - get(a);
    if (dt > 0 && d >= 0) out.push({ t: b.t, v: d / dt });
  }
  return out;
}

// ---- views ----

function card(key, value, id) {
  return h('div', { class: 'card' }, h('div', { class: 'k', text: key }), h('div', { class: 'v', text: value, 'data-card': id }));
}

// A table's head: [title, numeric?] per column (numeric ones right-aligned).
function tableHead(...cols) {
  return h('thead', {}, h('tr', {}, cols.map(([t, num]) => h('th', { scope: 'col', class: num ? 'num' : undefined, text: t }))));
}

// Puts `fresh` cards in `container`: the first time as they are, after that only the values
// that changed (rebuilding them every second would cost the browser a layout each time).
function setCards(container, fresh) {
  const old = container.querySelectorAll('.card');
  if (old.length !== fresh.length) {
    container.replaceChildren(...fresh);
    return;
  }
  fresh.forEach((f, i) => {
    const [ok, ov] = old[i].children;
    const [fk, fv] = f.children;
    if (ok.textContent !== fk.textContent) ok.textContent = fk.textContent;
    if (ov.textContent !== fv.textContent) ov.textContent = fv.textContent;
  });
}

function overview(view) {
  view.append(h('h1', { text: 'Overview' }));
  const cards = h('div', { class: 'cards' });
  const charts = h('div', { class: 'charts' });
  const about = h('div');
  view.append(cards, charts, h('h2', { text: 'Server' }), about);
  const doorSeries = DOORS.map((d, i) => ({ name: d, className: `s${i + 1}` }));
  const span = HISTORY_MS / 1000;
  const recordsIn = new LineChart(charts, { title: 'Records in per second', series: doorSeries, format: fmtNum, spanSeconds: span });
  const bytesIn = new LineChart(charts, { title: 'Bytes in per second', series: doorSeries, format: fmtBytes, spanSeconds: span });
  const bytesOut = new LineChart(charts, { title: 'Bytes out per second', series: doorSeries, format: fmtBytes, spanSeconds: span });
  const conns = new LineChart(charts, {
    title: 'Connections',
    series: [...doorSeries, { name: 'websocket', className: 's4' }],
    format: fmtNum,
    spanSeconds: span,
  });
  const render = (samples) => {
    if (feed.denied) {
      cards.replaceChildren(h('p', { id: 'denied', text: 'Your access does not include the server\'s figures (Describe on the cluster). Topics, Messages and Groups show what you may see.' }));
      return;
    }
    if (!samples.length) {
      cards.replaceChildren(h('p', { class: 'muted', text: 'Waiting for the first sample…' }));
      return;
    }
    const last = samples[samples.length - 1];
    const perDoor = (field) => {
      const rs = DOORS.map((d) => rates(samples, (s) => s.doors[d][field]));
      const n = Math.min(...rs.map((r) => r.length));
      const points = [];
      for (let i = 0; i < n; i += 1) {
        points.push({ t: rs[0][rs[0].length - n + i].t, values: rs.map((r) => r[r.length - n + i].v) });
      }
      return points;
    };
    const rin = perDoor('records_in');
    const bin = perDoor('bytes_in');
    const bout = perDoor('bytes_out');
    recordsIn.update(rin);
    bytesIn.update(bin);
    bytesOut.update(bout);
    conns.update(samples.map((s) => ({ t: s.t, values: [...DOORS.map((d) => s.doors[d].connections), s.ws.connections] })));
    const sum = (pts) => (pts.length ? pts[pts.length - 1].values.reduce((a, b) => a + b, 0) : 0);
    const throttledMinute = rates(samples.slice(-61), (s) => s.throttled).reduce((a, p) => a + p.v, 0);
    setCards(cards, [
      card('Records in/s', fmtNum(sum(rin)), 'records-in'),
      card('Bytes in/s', fmtBytes(sum(bin)), 'bytes-in'),
      card('Bytes out/s', fmtBytes(sum(bout)), 'bytes-out'),
      ...DOORS.map((d) => card(`${d} connections`, fmtNum(last.doors[d].connections), `conn-${d}`)),
      card('WebSocket connections', fmtNum(last.ws.connections), 'conn-ws'),
      card('Topics / partitions', `${fmtNum(last.topics)} / ${fmtNum(last.partitions)}`, 'topics'),
      card('Log size', fmtBytes(last.disk.log_bytes), 'log-bytes'),
      card('Disk free', last.disk.free_bytes === null ? '–' : `${fmtBytes(last.disk.free_bytes)} of ${fmtBytes(last.disk.total_bytes)}`, 'disk-free'),
      card('Throttled (last min)', fmtNum(throttledMinute), 'throttled'),
      card('WebSocket records dropped', fmtNum(last.ws.dropped), 'ws-dropped'),
      card('Produce memory in use', `${fmtBytes(last.memory.produce_in_use)} of ${fmtBytes(last.memory.produce_budget)}`, 'memory'),
      card('Uptime', fmtDuration(last.uptime_s), 'uptime'),
    ]);
    const hello = feed.hello;
    if (hello && !about.childElementCount) {
      const d = hello.default_topic || {};
      const rows = [
        ['Version', hello.version],
        ['Started', fmtTime(hello.started_at)],
        ['Data directory', hello.data_dir],
        ['Authentication', hello.authentication ? 'required' : 'off'],
        ['Quotas', hello.quotas ? 'on' : 'off'],
        ['Topics created on first use', hello.auto_create_topics ? 'yes' : 'no'],
        ['New topics', `${d.partitions} partitions, durability ${JSON.stringify(d.durability)}, retention ${d.retention_ms ? `${d.retention_ms} ms` : 'unlimited'}`],
      ];
      about.append(h('div', { class: 'table-wrap' }, h('table', {}, h('tbody', {},
        rows.map(([k, v]) => h('tr', {}, h('th', { scope: 'row', text: k }), h('td', { text: v })))))));
    }
  };
  return feed.watch(render);
}

// Polls `f` every `ms` until the view goes; returns the stop function.
function every(ms, f) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      await f();
    } catch (e) {
      if (!stopped) toast(e.message);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function topicRecords(t) {
  return t.partitions.reduce((a, p) => a + (p.high_watermark - p.log_start_offset), 0);
}

function retentionText(c) {
  const parts = [];
  if (c.retention_ms) parts.push(`${fmtDuration(c.retention_ms / 1000)}`);
  if (c.retention_bytes) parts.push(fmtBytes(c.retention_bytes));
  if (c.cleanup_policy && c.cleanup_policy !== 'delete') parts.push(String(c.cleanup_policy));
  return parts.length ? parts.join(', ') : 'unlimited';
}

async function deleteTopic(name) {
  const yes = await confirmByName(`Delete topic “${name}” and every record in it? This cannot be undone.`, name, 'Delete topic');
  if (!yes) return false;
  await api(`/topics/${encodeURIComponent(name)}`, { method: 'DELETE' });
  toast(`Topic ${name} deleted`, true);
  return true;
}

function topics(view) {
  view.append(h('h1', { text: 'Topics' }));
  const name = h('input', { id: 'new-topic-name', required: true, autocomplete: 'off' });
  const parts = h('input', { id: 'new-topic-partitions', type: 'number', min: 1, max: 10000, value: 1 });
  const durability = h('select', { id: 'new-topic-durability' },
    h('option', { value: '', text: 'server default' }),
    h('option', { value: 'always', text: 'always (fsync before ack)' }),
    h('option', { value: 'never', text: 'never (page cache)' }));
  const form = h('form', {
    class: 'row',
    'aria-label': 'Create a topic',
    onsubmit: async (e) => {
      e.preventDefault();
      const body = { name: name.value.trim(), partitions: Number(parts.value) };
      if (durability.value) body.durability = durability.value;
      try {
        await api('/topics', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
        toast(`Topic ${body.name} created`, true);
        name.value = '';
        await refresh();
      } catch (err) {
        toast(err.message);
      }
    },
  },
  h('div', {}, h('label', { for: 'new-topic-name', text: 'New topic' }), name),
  h('div', {}, h('label', { for: 'new-topic-partitions', text: 'Partitions' }), parts),
  h('div', {}, h('label', { for: 'new-topic-durability', text: 'Durability' }), durability),
  h('button', { type: 'submit', class: 'primary', text: 'Create' }));
  const body = h('tbody');
  const table = h('div', { class: 'table-wrap' }, h('table', { id: 'topics-table' },
    tableHead(['Topic'], ['Partitions', 1], ['Records', 1], ['Size', 1], ['Records/s', 1], ['Retention'], ['']),
    body));
  view.append(may('create_topics') ? form : '', table);
  let before = null;
  const refresh = async () => {
    const r = await api('/topics');
    const now = performance.now();
    const ends = new Map(r.topics.map((t) => [t.name, t.partitions.reduce((a, p) => a + p.high_watermark, 0)]));
    const rows = r.topics.sort((a, b) => a.name.localeCompare(b.name)).map((t) => {
      const dt = before ? (now - before.at) / 1000 : 0;
      const prev = before && before.ends.get(t.name);
      const rate = dt > 0 && prev !== undefined ? Math.max(0, (ends.get(t.name) - prev) / dt) : null;
      return h('tr', { 'data-topic': t.name },
        h('td', {}, h('a', { href: `#/topics/${encodeURIComponent(t.name)}`, text: t.name })),
        h('td', { class: 'num', text: t.partitions.length }),
        h('td', { class: 'num', text: fmtNum(topicRecords(t)) }),
        h('td', { class: 'num', text: fmtBytes(t.partitions.reduce((a, p) => a + p.size_bytes, 0)) }),
        h('td', { class: 'num', text: rate === null ? '–' : fmtNum(rate) }),
        h('td', { text: retentionText(t.config) }),
        h('td', {}, may('delete_topics') && h('button', {
          type: 'button',
          class: 'danger',
          'aria-label': `Delete topic ${t.name}`,
          text: 'Delete',
          onclick: async () => {
            try {
              if (await deleteTopic(t.name)) await refresh();
            } catch (err) {
              toast(err.message);
            }
          },
        })));
    });
    body.replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colspan: 7, class: 'muted', text: 'No topics yet.' }))]));
    before = { at: now, ends };
  };
  return every(2000, refresh);
}

function topicPage(view, name) {
  view.append(h('p', {}, h('a', { href: '#/topics', text: '← Topics' })), h('h1', { text: `Topic ${name}` }));
  const summary = h('div', { class: 'cards' });
  const body = h('tbody');
  const del = h('button', {
    type: 'button',
    class: 'danger',
    text: 'Delete topic',
    onclick: async () => {
      try {
        if (await deleteTopic(name)) location.hash = '#/topics';
      } catch (err) {
        toast(err.message);
      }
    },
  });
  view.append(summary, h('h2', { text: 'Partitions' }), h('div', { class: 'table-wrap' }, h('table', { id: 'partitions-table' },
    tableHead(['Partition', 1], ['Log start', 1], ['High watermark', 1], ['Size', 1], ['Records/s', 1], ['']),
    body)), h('div', { class: 'row' }, del));
  let before = null;
  return every(1000, async () => {
    const t = await api(`/topics/${encodeURIComponent(name)}`);
    const now = performance.now();
    const dt = before ? (now - before.at) / 1000 : 0;
    setCards(summary, [
      card('Partitions', String(t.partitions.length)),
      card('Records', fmtNum(topicRecords(t))),
      card('Size', fmtBytes(t.partitions.reduce((a, p) => a + p.size_bytes, 0))),
      card('Retention', retentionText(t.config)),
      card('Durability', typeof t.config.durability === 'string' ? t.config.durability : JSON.stringify(t.config.durability)),
    ]);
    body.replaceChildren(...t.partitions.map((p) => {
      const prev = before && before.hwm[p.partition];
      const rate = dt > 0 && prev !== undefined ? Math.max(0, (p.high_watermark - prev) / dt) : null;
      return h('tr', {},
        h('td', { class: 'num', text: p.partition }),
        h('td', { class: 'num', text: p.log_start_offset }),
        h('td', { class: 'num', text: p.high_watermark }),
        h('td', { class: 'num', text: fmtBytes(p.size_bytes) }),
        h('td', { class: 'num', text: rate === null ? '–' : fmtNum(rate) }),
        h('td', {}, h('a', { href: `#/messages?topic=${encodeURIComponent(name)}&partition=${p.partition}`, text: 'Browse' })));
    }));
    before = { at: now, hwm: Object.fromEntries(t.partitions.map((p) => [p.partition, p.high_watermark])) };
  });
}

// ---- messages ----

function fromBase64(s) {
  if (s === null || s === undefined) return null;
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  return out;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function asText(bytes) {
  try {
    return utf8.decode(bytes);
  } catch {
    return null;
  }
}

function asHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}

// The bytes shown as `format` (auto: JSON when they parse as an object or array, else text
// when valid UTF-8, else hex).
function show(bytes, format) {
  if (bytes === null) return 'null';
  const text = asText(bytes);
  if (format === 'hex' || (text === null && format !== 'text')) return asHex(bytes);
  if (format === 'text') return text === null ? asHex(bytes) : text;
  try {
    const v = JSON.parse(text);
    if (format === 'json') return JSON.stringify(v, null, 2);
    if (v !== null && typeof v === 'object') return JSON.stringify(v);
  } catch {
    if (format === 'json') return `(not JSON) ${text}`;
  }
  return text;
}

// The value at `path` (dot-separated, as in `a.b.0`) of the JSON in `text`; undefined when
// not there.
function jsonAt(text, path) {
  let v;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  for (const part of path.replace(/^\$\.?/, '').split('.').filter(Boolean)) {
    if (v === null || typeof v !== 'object' || !(part in v)) return undefined;
    v = v[part];
  }
  return v;
}

// A value decoded with the topic's schema, as JSON text; null when it was not decoded.
function decodedText(rec) {
  return rec.value_decoded === undefined ? null : JSON.stringify(rec.value_decoded);
}

function matches(rec, f) {
  const key = fromBase64(rec.key_base64);
  const value = fromBase64(rec.value_base64);
  if (f.key) {
    const k = key === null ? null : asText(key);
    if (k !== f.key) return false;
  }
  // Filters look at the decoded message when the topic has a schema.
  const text = decodedText(rec) ?? (value === null ? null : asText(value));
  if (f.contains && (text === null || !text.includes(f.contains))) return false;
  if (f.path) {
    if (text === null) return false;
    const v = jsonAt(text, f.path);
    if (v === undefined) return false;
    if (f.equals !== '' && String(typeof v === 'object' ? JSON.stringify(v) : v) !== f.equals) return false;
  }
  return true;
}

const SCAN_LIMIT = 20000;
const SHOW_LIMIT = 200;

function messages(view, params) {
  view.append(h('h1', { text: 'Messages' }));
  const topicSel = h('select', { id: 'msg-topic', required: true });
  const partition = h('input', { id: 'msg-partition', type: 'number', min: 0, value: params.get('partition') || 0 });
  const from = h('select', { id: 'msg-from' },
    h('option', { value: 'beginning', text: 'the beginning' }),
    h('option', { value: 'offset', text: 'an offset' }),
    h('option', { value: 'timestamp', text: 'a time' }),
    h('option', { value: 'end', text: 'the end, then live' }));
  const offset = h('input', { id: 'msg-offset', type: 'number', min: 0, value: 0 });
  const time = h('input', { id: 'msg-time', type: 'datetime-local', step: 1 });
  const key = h('input', { id: 'msg-key', autocomplete: 'off' });
  const contains = h('input', { id: 'msg-contains', autocomplete: 'off' });
  const path = h('input', { id: 'msg-path', autocomplete: 'off', placeholder: 'a.b' });
  const equals = h('input', { id: 'msg-equals', autocomplete: 'off' });
  const format = h('select', { id: 'msg-format' },
    ...['auto', 'json', 'text', 'hex'].map((f) => h('option', { value: f, text: f })),
    h('option', { value: 'protobuf', text: 'protobuf (the topic\'s schema)', disabled: true }));
  // Topics whose values have a schema the server decodes with: name → message type.
  const schemas = new Map();
  const schemaNote = h('p', { id: 'msg-schema', class: 'muted' });
  const showSchema = () => {
    const message = schemas.get(topicSel.value);
    format.querySelector('option[value=protobuf]').disabled = !message;
    if (!message && format.value === 'protobuf') format.value = 'auto';
    schemaNote.textContent = message ? `Values are Protobuf ${message} messages (the topic's schema): shown decoded, and filtered as JSON.` : '';
  };
  topicSel.addEventListener('change', showSchema);
  const status = h('p', { id: 'msg-status', class: 'muted', role: 'status' });
  const body = h('tbody');
  let run = 0;
  const stop = () => { run += 1; };
  const field = (id, text, input) => h('div', {}, h('label', { for: id, text }), input);
  const form = h('form', {
    'aria-label': 'Read records',
    onsubmit: (e) => {
      e.preventDefault();
      read();
    },
  },
  h('div', { class: 'row' },
    field('msg-topic', 'Topic', topicSel), field('msg-partition', 'Partition', partition),
    field('msg-from', 'From', from), field('msg-offset', 'Offset', offset), field('msg-time', 'Time (UTC)', time)),
  h('div', { class: 'row' },
    field('msg-key', 'Key is', key), field('msg-contains', 'Value contains', contains),
    field('msg-path', 'JSON field', path), field('msg-equals', 'equals', equals),
    field('msg-format', 'Show values as', format),
    h('button', { type: 'submit', class: 'primary', id: 'msg-read', text: 'Read' }),
    h('button', { type: 'button', id: 'msg-stop', text: 'Stop', onclick: () => { stop(); status.textContent = 'Stopped.'; } })));
  const table = h('div', { class: 'table-wrap' }, h('table', { id: 'messages-table' },
    tableHead(['Offset', 1], ['Time'], ['Key'], ['Headers'], ['Value']),
    body));
  // Produce a test record.
  const pKey = h('input', { id: 'produce-key', autocomplete: 'off' });
  const pValue = h('textarea', { id: 'produce-value', rows: 2, cols: 40 });
  const pHeaders = h('input', { id: 'produce-headers', autocomplete: 'off', placeholder: 'name=value, other=value' });
  const produceForm = h('form', {
    class: 'row',
    'aria-label': 'Produce a test record',
    onsubmit: async (e) => {
      e.preventDefault();
      const headers = {};
      for (const pair of pHeaders.value.split(',').map((s) => s.trim()).filter(Boolean)) {
        const i = pair.indexOf('=');
        if (i > 0) headers[pair.slice(0, i).trim()] = pair.slice(i + 1).trim();
      }
      const rec = { value: pValue.value, headers, partition: Number(partition.value) };
      if (pKey.value) rec.key = pKey.value;
      try {
        const r = await api(`/topics/${encodeURIComponent(topicSel.value)}/records`, {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ records: [rec] }),
        });
        const o = r.offsets[0];
        toast(`Written to partition ${o.partition} at offset ${o.offset}`, true);
      } catch (err) {
        toast(err.message);
      }
    },
  },
  field('produce-key', 'Key', pKey), field('produce-value', 'Value', pValue), field('produce-headers', 'Headers', pHeaders),
  h('button', { type: 'submit', id: 'produce-send', text: 'Produce to this partition' }));
  view.append(form, schemaNote, status, table);
  if (may('produce')) view.append(h('h2', { text: 'Produce a test record' }), produceForm);

  const addRow = (rec, f) => {
    // Header values are text when valid UTF-8, else in headers_base64.
    const headers = [
      ...Object.entries(rec.headers || {}).filter(([, v]) => v !== null).map(([k, v]) => `${k}=${v}`),
      ...Object.entries(rec.headers_base64 || {}).map(([k, v]) => `${k}=${show(fromBase64(v), 'hex')}`),
    ].join('\n');
    const k = fromBase64(rec.key_base64);
    body.append(h('tr', { 'data-offset': rec.offset },
      h('td', { class: 'num', text: rec.offset }),
      h('td', { class: 'time', text: fmtTime(rec.timestamp) }),
      h('td', { class: 'value', text: k === null ? '' : show(k, 'auto') }),
      h('td', { class: 'value', text: headers }),
      h('td', { class: 'value', text: showValue(rec, f) })));
  };
  // With the topic's schema, the decoded message (auto: compact, protobuf: indented), or why
  // the value is not one; else the bytes as `f` says.
  const showValue = (rec, f) => {
    const decoded = decodedText(rec);
    if ((f === 'auto' || f === 'protobuf') && decoded !== null) {
      return f === 'protobuf' ? JSON.stringify(rec.value_decoded, null, 2) : decoded;
    }
    if (f === 'protobuf' && rec.value_decode_error) return `(${rec.value_decode_error}) ${show(fromBase64(rec.value_base64), 'hex')}`;
    return show(fromBase64(rec.value_base64), f === 'protobuf' ? 'auto' : f);
  };

  async function read() {
    stop();
    const mine = run;
    body.replaceChildren();
    const topic = topicSel.value;
    const part = Number(partition.value);
    if (!topic) return;
    const filter = { key: key.value, contains: contains.value, path: path.value.trim(), equals: equals.value };
    const fmt = format.value;
    const base = `/topics/${encodeURIComponent(topic)}/partitions/${part}/records?format=binary${schemas.has(topic) ? '&schema=true' : ''}`;
    let next;
    try {
      if (from.value === 'offset') next = `&offset=${Number(offset.value)}`;
      else if (from.value === 'timestamp') next = `&timestamp=${Date.parse(`${time.value}Z`) || 0}`;
      else if (from.value === 'end') {
        const t = await api(`/topics/${encodeURIComponent(topic)}`);
        const p = t.partitions.find((x) => x.partition === part);
        if (!p) throw new Error(`topic ${topic} has no partition ${part}`);
        next = `&offset=${Math.max(p.log_start_offset, p.high_watermark - 20)}`;
      } else next = '';
      const live = from.value === 'end';
      let scanned = 0;
      let shown = 0;
      status.textContent = 'Reading…';
      while (mine === run) {
        const wait = live ? '&max_wait_ms=5000' : '';
        const r = await api(`${base}${next}${wait}`);
        if (mine !== run) return;
        for (const rec of r.records) {
          scanned += 1;
          if (matches(rec, filter)) {
            shown += 1;
            addRow(rec, fmt);
            if (live) while (body.childElementCount > SHOW_LIMIT) body.firstElementChild.remove();
          }
        }
        next = `&offset=${r.next_offset}`;
        const atEnd = r.next_offset >= r.high_watermark;
        status.textContent = live
          ? `Live: ${shown} shown of ${scanned} read; waiting for more…`
          : `${shown} shown of ${scanned} read, up to offset ${r.next_offset}${atEnd ? ' (the end)' : ''}.`;
        if (!live && (atEnd || shown >= SHOW_LIMIT || scanned >= SCAN_LIMIT)) return;
      }
    } catch (err) {
      if (mine === run) status.textContent = `Error: ${err.message}`;
    }
  }

  (async () => {
    try {
      const r = await api('/topics');
      const names = r.topics.map((t) => t.name).sort();
      for (const t of r.topics) if (t.schema) schemas.set(t.name, t.schema.message);
      topicSel.replaceChildren(...names.map((n) => h('option', { value: n, text: n })));
      const want = params.get('topic');
      if (want && names.includes(want)) topicSel.value = want;
      showSchema();
      if (want) read();
    } catch (err) {
      toast(err.message);
    }
  })();
  return stop;
}

// ---- groups ----

function groups(view) {
  view.append(h('h1', { text: 'Consumer groups' }));
  const body = h('tbody');
  view.append(h('div', { class: 'table-wrap' }, h('table', { id: 'groups-table' },
    tableHead(['Group'], ['Protocol'], ['Members', 1], ['Lag', 1]),
    body)));
  return every(2000, async () => {
    const r = await api('/groups');
    // Described one by one: the first 100 (a server with more is better read with the CLI).
    const names = r.groups.slice().sort().slice(0, 100);
    const described = await Promise.all(names.map((g) => api(`/groups/${encodeURIComponent(g)}`).catch(() => null)));
    body.replaceChildren(...(names.length ? names.map((g, i) => {
      const d = described[i];
      return h('tr', { 'data-group': g },
        h('td', {}, h('a', { href: `#/groups/${encodeURIComponent(g)}`, text: g })),
        h('td', { text: d && d.protocol ? d.protocol : '–' }),
        h('td', { class: 'num', text: d ? d.members.length : '–' }),
        h('td', { class: 'num', text: d ? fmtNum(d.offsets.reduce((a, o) => a + o.lag, 0)) : '–' }));
    }) : [h('tr', {}, h('td', { colspan: 4, class: 'muted', text: 'No groups yet.' }))]));
  });
}

function groupPage(view, name) {
  view.append(h('p', {}, h('a', { href: '#/groups', text: '← Groups' })), h('h1', { text: `Group ${name}` }));
  const summary = h('div', { class: 'cards' });
  const charts = h('div', { class: 'charts' });
  const members = h('tbody');
  const offsets = h('tbody');
  view.append(summary, charts,
    h('h2', { text: 'Members' }),
    h('div', { class: 'table-wrap' }, h('table', { id: 'members-table' }, tableHead(['Member'], ['Client'], ['Assignment']), members)),
    h('h2', { text: 'Committed offsets and lag' }),
    h('div', { class: 'table-wrap' }, h('table', { id: 'offsets-table' }, tableHead(['Topic'], ['Partition', 1], ['Committed', 1], ['High watermark', 1], ['Lag', 1]), offsets)));
  const lagChart = new LineChart(charts, { title: 'Lag (records), last 15 minutes', series: [{ name: 'lag', className: 's2' }], format: fmtNum, spanSeconds: HISTORY_MS / 1000 });
  // The server's samples of the last 15 minutes first (every 5 s, summed over topics), then
  // this page's own, every 2 s.
  let points = [];
  const history = api(`/groups/${encodeURIComponent(name)}/lag`).then((r) => {
    const byTime = new Map();
    for (const t of r.topics) {
      for (const [at, lag] of t.points) byTime.set(at, (byTime.get(at) || 0) + lag);
    }
    const past = [...byTime.entries()].sort((a, b) => a[0] - b[0]).map(([t, lag]) => ({ t, values: [lag] }));
    const since = points.length ? points[0].t : Infinity;
    points = past.filter((p) => p.t < since).concat(points);
  }).catch((err) => toast(err.message));
  // Resetting offsets: only while the group has no members (the server refuses otherwise).
  const rTopic = h('select', { id: 'reset-topic', required: true });
  const rTo = h('select', { id: 'reset-to' },
    h('option', { value: 'earliest', text: 'the earliest offset' }),
    h('option', { value: 'latest', text: 'the latest offset' }),
    h('option', { value: 'timestamp', text: 'a time' }));
  const rTime = h('input', { id: 'reset-time', type: 'datetime-local', step: 1 });
  const reset = h('section', { id: 'reset', hidden: true, 'aria-labelledby': 'reset-title' },
    h('h2', { id: 'reset-title', text: 'Reset offsets' }),
    h('p', { class: 'muted', text: 'The group has no members: choose where it reads a topic from when it next starts.' }),
    h('form', {
      class: 'row',
      'aria-label': 'Reset offsets',
      onsubmit: async (e) => {
        e.preventDefault();
        const to = rTo.value === 'timestamp' ? { timestamp: Date.parse(`${rTime.value}Z`) || 0 } : rTo.value;
        const where = rTo.value === 'timestamp' ? `the first record at or after ${rTime.value} UTC` : `the ${rTo.value} offset`;
        const yes = await confirmByName(`Move group “${name}” on every partition of ${rTopic.value} to ${where}?`, name, 'Reset offsets');
        if (!yes) return;
        try {
          await api(`/groups/${encodeURIComponent(name)}/offsets`, {
            method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ topic: rTopic.value, to }),
          });
          toast(`Offsets of ${name} on ${rTopic.value} reset`, true);
        } catch (err) {
          toast(err.message);
        }
      },
    },
    h('div', {}, h('label', { for: 'reset-topic', text: 'Topic' }), rTopic),
    h('div', {}, h('label', { for: 'reset-to', text: 'To' }), rTo),
    h('div', {}, h('label', { for: 'reset-time', text: 'Time (UTC)' }), rTime),
    h('button', { type: 'submit', id: 'reset-go', class: 'danger', text: 'Reset offsets' })));
  view.append(reset);
  return every(2000, async () => {
    const g = await api(`/groups/${encodeURIComponent(name)}`);
    reset.hidden = g.members.length > 0 || !may('reset_offsets');
    const topicsOf = [...new Set(g.offsets.map((o) => o.topic))].sort();
    if (rTopic.options.length !== topicsOf.length || topicsOf.some((t, i) => rTopic.options[i].value !== t)) {
      rTopic.replaceChildren(...topicsOf.map((t) => h('option', { value: t, text: t })));
    }
    const lag = g.offsets.reduce((a, o) => a + o.lag, 0);
    await history;
    points.push({ t: Date.now(), values: [lag] });
    while (points.length && points[0].t < Date.now() - HISTORY_MS) points.shift();
    lagChart.update(points);
    setCards(summary, [
      card('Protocol', g.protocol || 'none (offsets only)'),
      card('Generation', String(g.generation)),
      card('Members', String(g.members.length)),
      card('Lag', fmtNum(lag), 'group-lag'),
    ]);
    members.replaceChildren(...(g.members.length ? g.members.map((m) => h('tr', {},
      h('td', { class: 'value', text: m.member_id }),
      h('td', { text: m.client_id }),
      h('td', { text: Object.entries(m.assignment).map(([t, ps]) => `${t}: ${ps.join(', ')}`).join('; ') || '–' })))
      : [h('tr', {}, h('td', { colspan: 3, class: 'muted', text: 'No members: the group is empty.' }))]));
    offsets.replaceChildren(...g.offsets.map((o) => h('tr', {},
      h('td', { text: o.topic }),
      h('td', { class: 'num', text: o.partition }),
      h('td', { class: 'num', text: o.committed }),
      h('td', { class: 'num', text: o.high_watermark }),
      h('td', { class: 'num', text: o.lag }))));
  });
}

// ---- flow ----

// Where data is held back: quotas' throttles and who gets them, the produce memory budget,
// WebSocket subscribers' drops, and the limits in force.
function flow(view) {
  view.append(h('h1', { text: 'Flow' }));
  const cards = h('div', { class: 'cards' });
  const charts = h('div', { class: 'charts' });
  const throttled = h('tbody');
  const pushes = h('tbody');
  const addresses = h('tbody');
  const addressNote = h('p', { class: 'muted', id: 'addresses-note' });
  const limits = h('tbody');
  const span = HISTORY_MS / 1000;
  view.append(cards, charts,
    h('h2', { text: 'Clients throttled in the last minute' }),
    h('div', { class: 'table-wrap' }, h('table', { id: 'throttled-table' },
      tableHead(['Client'], ['Quota'], ['Throttles', 1], ['Last throttle', 1], ['Seconds ago', 1]), throttled)),
    h('h2', { text: 'Push subscriptions' }),
    h('p', { class: 'muted', text: 'What a subscriber that falls behind gets: credit holds the records back (nothing dropped); a queue drops the oldest, or ends the subscription when it overflows.' }),
    h('div', { class: 'table-wrap' }, h('table', { id: 'push-table' },
      tableHead(['Door'], ['Policy'], ['Open', 1], ['Dropped/s', 1], ['Dropped', 1], ['Ended as slow', 1]), pushes)),
    h('h2', { text: 'Connections by address' }),
    addressNote,
    h('div', { class: 'table-wrap' }, h('table', { id: 'addresses-table' },
      tableHead(['Address'], ['Open', 1], ['Of the limit', 1]), addresses)),
    h('h2', { text: 'Limits' }),
    h('div', { class: 'table-wrap' }, h('table', { id: 'limits-table' }, limits)));
  const heldBack = new LineChart(charts, {
    title: 'Held back per second',
    series: [{ name: 'throttles', className: 's2' }, { name: 'WebSocket drops', className: 's3' }, { name: 'push drops', className: 's4' }],
    format: fmtNum,
    spanSeconds: span,
  });
  const memory = new LineChart(charts, {
    title: 'Produce memory in use',
    series: [{ name: 'in use', className: 's1' }],
    format: fmtBytes,
    spanSeconds: span,
  });
  const perSec = (v) => (v === null || v === undefined ? 'unlimited' : `${fmtBytes(v)}/s`);
  return feed.watch((samples) => {
    if (!samples.length) return;
    const last = samples[samples.length - 1];
    const thr = rates(samples, (s) => s.throttled);
    const drops = rates(samples, (s) => s.ws.dropped);
    // Samples from before the server counted pushes have none.
    const pushDropped = (s, policy) => (s.push ? s.push.policies.filter((p) => !policy || p.policy === policy).reduce((a, p) => a + p.dropped, 0) : 0);
    const pushDrops = rates(samples, (s) => pushDropped(s));
    heldBack.update(thr.map((p, i) => ({ t: p.t, values: [p.v, drops[i] ? drops[i].v : 0, pushDrops[i] ? pushDrops[i].v : 0] })));
    memory.update(samples.map((s) => ({ t: s.t, values: [s.memory.produce_in_use] })));
    const minute = (pts) => pts.slice(-60).reduce((a, p) => a + p.v, 0);
    const m = last.memory;
    setCards(cards, [
      card('Throttles (last min)', fmtNum(minute(thr)), 'flow-throttles'),
      card('Clients throttled (last min)', fmtNum(last.throttled_clients.length), 'flow-clients'),
      card('Produce memory in use', `${fmtBytes(m.produce_in_use)} (${Math.round((100 * m.produce_in_use) / Math.max(1, m.produce_budget))}%)`, 'flow-memory'),
      card('WebSocket drops (last min)', fmtNum(minute(drops)), 'flow-drops'),
      card('WebSocket subscriptions', fmtNum(last.ws.subscriptions), 'flow-subs'),
      card('Slow subscribers disconnected', fmtNum(last.ws.slow_disconnects), 'flow-slow'),
    ]);
    throttled.replaceChildren(...(last.throttled_clients.length ? last.throttled_clients.map((c) => h('tr', { 'data-client': c.client },
      h('td', { text: c.client }),
      h('td', { text: c.kind }),
      h('td', { class: 'num', text: fmtNum(c.times) }),
      h('td', { class: 'num', text: `${c.last_throttle_ms} ms` }),
      h('td', { class: 'num', text: c.seconds_ago }))) : [h('tr', {}, h('td', { colspan: 5, class: 'muted', text: 'Nobody: no client went over its quota in the last minute.' }))]));
    // Push subscriptions: the native door's by policy, and the WebSocket's together.
    const perMinute = (get) => {
      const pts = rates(samples, get).slice(-60);
      return pts.length ? pts.reduce((a, p) => a + p.v, 0) / pts.length : null;
    };
    const pushRows = (last.push ? last.push.policies : []).map((p) => ({
      door: 'native',
      policy: p.policy,
      open: p.open,
      rate: perMinute((s) => pushDropped(s, p.policy)),
      dropped: p.dropped,
      slow: p.policy === 'disconnect' ? last.push.slow_ends : null,
    }));
    pushRows.push({
      door: 'WebSocket',
      policy: 'per subscription',
      open: last.ws.subscriptions,
      rate: perMinute((s) => s.ws.dropped),
      dropped: last.ws.dropped,
      slow: last.ws.slow_disconnects,
    });
    pushes.replaceChildren(...pushRows.map((r) => h('tr', { 'data-push': `${r.door}/${r.policy}` },
      h('td', { text: r.door }),
      h('td', { text: r.policy }),
      h('td', { class: 'num', text: fmtNum(r.open) }),
      h('td', { class: 'num', text: fmtNum(r.rate) }),
      h('td', { class: 'num', text: fmtNum(r.dropped) }),
      h('td', { class: 'num', text: r.slow === null ? '–' : fmtNum(r.slow) }))));
    // Connections by address, against the per-address limit.
    const conn = last.connections;
    const cap = feed.hello && feed.hello.limits ? feed.hello.limits.max_connections_per_ip : 0;
    if (conn) {
      addressNote.textContent = `${fmtNum(conn.addresses)} addresses connected; refused since start: ${fmtNum(conn.refused_per_address)} for too many open, ${fmtNum(conn.refused_rate)} for opening too fast.`;
      addresses.replaceChildren(...(conn.busiest.length ? conn.busiest.map(([ip, n]) => h('tr', { 'data-address': ip },
        h('td', { text: ip }),
        h('td', { class: 'num', text: fmtNum(n) }),
        h('td', { class: 'num', text: cap ? `${Math.round((100 * n) / cap)}% of ${cap}` : 'no limit' }))) : [h('tr', {}, h('td', { colspan: 3, class: 'muted', text: 'No connections.' }))]));
    }
    const hello = feed.hello;
    if (hello && hello.limits && !limits.childElementCount) {
      const l = hello.limits;
      const q = l.quota_default;
      const rows = [
        ['Quotas', hello.quotas ? 'on' : 'off (no client has one)'],
        ['Produce per client (default)', perSec(q.produce_bytes_per_sec)],
        ['Fetch per client (default)', perSec(q.fetch_bytes_per_sec)],
        ['Requests per client (default)', q.requests_per_sec === null ? 'unlimited' : `${q.requests_per_sec}/s`],
        ['Clients with quotas of their own', String(l.quota_clients)],
        ['Connections per address', l.max_connections_per_ip ? String(l.max_connections_per_ip) : 'unlimited'],
        ['New connections per address per second', l.connection_rate_per_ip ? String(l.connection_rate_per_ip) : 'unlimited'],
        ['Produce memory budget', fmtBytes(l.produce_memory_bytes)],
      ];
      limits.append(...rows.map(([k, v]) => h('tr', {}, h('th', { scope: 'row', text: k }), h('td', { text: v }))));
    }
  });
}

// ---- pipelines ----

function pipelines(view) {
  view.append(h('h1', { text: 'Pipelines' }));
  const body = h('tbody');
  view.append(h('div', { class: 'table-wrap' }, h('table', { id: 'pipelines-table' },
    tableHead(['Pipeline'], ['State'], ['Restarts', 1], ['Last error']),
    body)));
  return every(2000, async () => {
    const r = await api('/pipelines');
    body.replaceChildren(...(r.pipelines.length ? r.pipelines.map((p) => h('tr', { 'data-pipeline': p.name },
      h('td', {}, h('a', { href: `#/pipelines/${encodeURIComponent(p.name)}`, text: p.name })),
      h('td', { text: p.state }),
      h('td', { class: 'num', text: p.restarts }),
      h('td', { text: p.last_error || '' })))
      : [h('tr', {}, h('td', { colspan: 4, class: 'muted', text: 'No pipelines: declare them under [pipelines] in the server\'s configuration (docs/pipelines.md).' }))]));
  });
}

// How long ago a time (ms since the epoch, by the server's clock) was, by this browser's.
function ago(ms) {
  if (ms === null || ms === undefined) return '–';
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : fmtDuration(Math.round(s));
}

// A node's third and fourth lines in the graph: a source's lag, then its checkpoint age and
// watermark where known; another component's queue, then what it dropped and failed.
function nodeLines(c) {
  if (c.queued_batches === null) {
    const progress = [];
    if (c.checkpoint_ms) progress.push(`ckpt ${ago(c.checkpoint_ms)}`);
    if (c.watermark_ms !== null && c.watermark_ms !== undefined) progress.push(`wm ${ago(c.watermark_ms)} behind`);
    return [c.lag === null ? '' : `lag ${fmtNum(c.lag)}`, progress.join(' · ')];
  }
  const lost = [];
  if (c.dropped) lost.push(`dropped ${fmtNum(c.dropped)}`);
  if (c.errors) lost.push(`errors ${fmtNum(c.errors)}`);
  return [`queue ${c.queued_batches} (${fmtBytes(c.queued_bytes)})`, lost.join(' · ')];
}

// The pipeline's graph: a column per depth (sources first, the dead-letter output last), an
// arrow per input, each component with its rate out and its queue.
function drawGraph(container, components, rateOf) {
  const byName = new Map(components.map((c) => [c.name, c]));
  const depth = new Map();
  const depthOf = (c, seen = new Set()) => {
    if (depth.has(c.name)) return depth.get(c.name);
    if (seen.has(c.name)) return 0;
    seen.add(c.name);
    const ins = c.inputs.map((i) => byName.get(i.split('.')[0])).filter(Boolean);
    const d = ins.length ? 1 + Math.max(...ins.map((i) => depthOf(i, seen))) : 0;
    depth.set(c.name, d);
    return d;
  };
  components.forEach((c) => depthOf(c));
  const last = Math.max(0, ...[...depth.values()]);
  const columns = [];
  for (const c of components) {
    const d = c.inputs.length === 0 && c.kind === 'sink' ? last + 1 : depth.get(c.name);
    (columns[d] = columns[d] || []).push(c);
  }
  const BW = 190;
  const BH = 68;
  const GX = 60;
  const GY = 18;
  const rows = Math.max(1, ...columns.map((col) => (col ? col.length : 0)));
  const width = columns.length * (BW + GX);
  const height = rows * (BH + GY) + GY;
  const g = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', class: 'dag', 'aria-label': `Pipeline graph: ${components.length} components` });
  const at = new Map();
  columns.forEach((col, x) => (col || []).forEach((c, y) => at.set(c.name, { x: x * (BW + GX) + 10, y: GY + y * (BH + GY) })));
  for (const c of components) {
    const to = at.get(c.name);
    for (const input of c.inputs) {
      const from = at.get(input.split('.')[0]);
      if (!from) continue;
      g.append(svg('line', { class: 'edge', x1: from.x + BW, y1: from.y + BH / 2, x2: to.x, y2: to.y + BH / 2 }));
    }
  }
  for (const c of components) {
    const p = at.get(c.name);
    const full = c.queued_batches ? ' queue-busy' : '';
    const node = svg('g', { class: `node ${c.kind}${c.errors || c.retrying ? ' failing' : ''}${full}`, 'data-component': c.name });
    const [third, fourth] = nodeLines(c);
    node.append(
      svg('rect', { x: p.x, y: p.y, width: BW, height: BH, rx: 6 }),
      svg('text', { x: p.x + 8, y: p.y + 18, class: 'name' }, c.name),
      svg('text', { x: p.x + 8, y: p.y + 34 }, `${c.kind} · ${fmtNum(rateOf(c))}/s out`),
      svg('text', { x: p.x + 8, y: p.y + 48 }, third),
      svg('text', { x: p.x + 8, y: p.y + 62 }, fourth),
    );
    g.append(node);
  }
  container.replaceChildren(g);
}

function pipelinePage(view, name) {
  view.append(h('p', {}, h('a', { href: '#/pipelines', text: '← Pipelines' })), h('h1', { text: `Pipeline ${name}` }));
  const summary = h('div', { class: 'cards' });
  const graph = h('div', { class: 'dag-wrap', id: 'pipeline-graph' });
  const body = h('tbody');
  const control = (action) => h('button', {
    type: 'button',
    id: `pipeline-${action}`,
    text: action === 'stop' ? 'Stop' : 'Start',
    onclick: async () => {
      try {
        await api(`/pipelines/${encodeURIComponent(name)}/${action}`, { method: 'POST' });
        toast(`Pipeline ${name}: ${action === 'stop' ? 'stopped' : 'started'}`, true);
      } catch (err) {
        toast(err.message);
      }
    },
  });
  view.append(summary, may('operate_pipelines') ? h('div', { class: 'row' }, control('stop'), control('start')) : '', h('h2', { text: 'Graph' }), graph,
    h('h2', { text: 'Components' }),
    h('div', { class: 'table-wrap' }, h('table', { id: 'components-table' },
      tableHead(['Component'], ['Kind'], ['Received/s', 1], ['Sent/s', 1], ['Sent', 1], ['Dropped', 1], ['Errors', 1], ['Queue', 1], ['Lag', 1], ['Checkpoint age', 1], ['Watermark', 1], ['Retrying']), body)));
  let before = null;
  return every(1000, async () => {
    const p = await api(`/pipelines/${encodeURIComponent(name)}`);
    const now = performance.now();
    const dt = before ? (now - before.at) / 1000 : 0;
    const rate = (c, field) => {
      const prev = before && before.counts.get(c.name);
      return dt > 0 && prev ? Math.max(0, (c[field] - prev[field]) / dt) : 0;
    };
    const checkpoints = p.components.map((c) => c.checkpoint_ms).filter(Boolean);
    setCards(summary, [
      card('State', p.state, 'pipeline-state'),
      card('Restarts', String(p.restarts)),
      card('Errors', fmtNum(p.components.reduce((a, c) => a + c.errors, 0))),
      card('Last error', p.last_error || 'none'),
      card('Oldest checkpoint', checkpoints.length ? ago(Math.min(...checkpoints)) : '–', 'pipeline-checkpoint'),
    ]);
    drawGraph(graph, p.components, (c) => rate(c, 'sent'));
    body.replaceChildren(...p.components.map((c) => h('tr', { 'data-component': c.name },
      h('td', { text: c.name }),
      h('td', { text: c.kind }),
      h('td', { class: 'num', text: fmtNum(rate(c, 'received')) }),
      h('td', { class: 'num', text: fmtNum(rate(c, 'sent')) }),
      h('td', { class: 'num', text: c.sent }),
      h('td', { class: 'num', text: c.dropped }),
      h('td', { class: 'num', text: c.errors }),
      h('td', { class: 'num', text: c.queued_batches === null ? '–' : `${c.queued_batches} (${fmtBytes(c.queued_bytes)})` }),
      h('td', { class: 'num', text: c.lag === null ? '–' : c.lag }),
      h('td', { class: 'num', text: c.checkpoint_ms ? ago(c.checkpoint_ms) : '–' }),
      h('td', { class: 'num', title: c.watermark_ms === null || c.watermark_ms === undefined ? '' : fmtTime(c.watermark_ms), text: c.watermark_ms === null || c.watermark_ms === undefined ? '–' : `${ago(c.watermark_ms)} behind` }),
      h('td', { text: c.retrying || '' }))));
    before = { at: now, counts: new Map(p.components.map((c) => [c.name, c])) };
  });
}

// ---- routing ----

let leave = null;

function route() {
  const hash = location.hash || '#/overview';
  const [pathPart, query] = hash.slice(2).split('?');
  const parts = pathPart.split('/').map(decodeURIComponent);
  const params = new URLSearchParams(query || '');
  if (leave) leave();
  leave = null;
  const view = document.getElementById('view');
  view.replaceChildren();
  const section = parts[0] || 'overview';
  if (!sees(section)) {
    const first = [...document.querySelectorAll('[data-nav]')].find((a) => sees(a.dataset.nav));
    if (first && first.dataset.nav !== section) {
      location.hash = `#/${first.dataset.nav}`;
      return;
    }
  }
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (section === 'topics' && parts[1]) leave = topicPage(view, parts[1]);
  else if (section === 'topics') leave = topics(view);
  else if (section === 'messages') leave = messages(view, params);
  else if (section === 'groups' && parts[1]) leave = groupPage(view, parts[1]);
  else if (section === 'groups') leave = groups(view);
  else if (section === 'flow') leave = flow(view);
  else if (section === 'pipelines' && parts[1]) leave = pipelinePage(view, parts[1]);
  else if (section === 'pipelines') leave = pipelines(view);
  else leave = overview(view);
  document.title = `weir · ${section}${parts[1] ? ` · ${parts[1]}` : ''}`;
}

// Dark or light: the user's choice (kept), else the system's, followed as it changes.
function setupTheme() {
  const root = document.documentElement;
  const system = matchMedia('(prefers-color-scheme: dark)');
  const apply = () => {
    root.dataset.theme = localStorage.getItem('weir-theme') || (system.matches ? 'dark' : 'light');
  };
  apply();
  system.addEventListener('change', apply);
  document.getElementById('theme').addEventListener('click', () => {
    localStorage.setItem('weir-theme', root.dataset.theme === 'dark' ? 'light' : 'dark');
    apply();
  });
}

setupTheme();
setupToken();
feed.start();
window.addEventListener('hashchange', route);
loadMe();
