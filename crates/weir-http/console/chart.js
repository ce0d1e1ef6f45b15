// Line charts drawn as SVG: a few series over time, redrawn in place on each update.
// Hand-written because the console needs only this (a polyline per series, a y scale from
// zero, a time span), which is less code than a charting library's integration.

const NS = 'http://www.w3.org/2000/svg';
const H = 160;
const PAD = { left: 56, right: 8, top: 8, bottom: 20 };

// An SVG element with these attributes (and text, if given).
export function el(name, attrs = {}, text = null) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== null) e.textContent = text;
  return e;
}

// A "nice" upper bound for the y axis: 1, 2 or 5 times a power of ten.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// A chart in `container`: `series` is [{name, className}], `format` turns a value into text.
export class LineChart {
  constructor(container, { title, series, format, spanSeconds }) {
    this.series = series;
    this.format = format;
    this.span = spanSeconds * 1000;
    this.title = title;
    const fig = document.createElement('figure');
    fig.className = 'chart';
    const cap = document.createElement('figcaption');
    cap.textContent = title;
    this.legend = document.createElement('span');
    this.legend.className = 'legend';
    // One entry per series, its colour beside its name.
    this.keys = series.map((s) => {
      const key = document.createElement('span');
      key.className = `key ${s.className}`;
      this.legend.append(key);
      return key;
    });
    cap.append(' ', this.legend);
    this.svg = el('svg', { viewBox: `0 0 600 ${H}`, role: 'img' });
    this.svgTitle = el('title');
    this.svg.append(this.svgTitle);
    this.grid = el('g', { class: 'grid' });
    this.lines = series.map((s) => el('polyline', { class: `line ${s.className}`, fill: 'none' }));
    this.svg.append(this.grid, ...this.lines);
    fig.append(cap, this.svg);
    container.append(fig);
    // Read once and on resize, not on every update (reading it forces a layout).
    this.width = 600;
    this.gridKey = '';
    new ResizeObserver((entries) => {
      this.width = Math.max(200, Math.round(entries[0].contentRect.width)) || 600;
      this.gridKey = '';
    }).observe(this.svg);
  }

  // points: [{t, values: [..per series]}], oldest first; t in ms.
  update(points) {
    const now = points.length ? points[points.length - 1].t : Date.now();
    const from = now - this.span;
    const shown = points.filter((p) => p.t >= from);
    let max = 0;
    for (const p of shown) for (const v of p.values) if (v > max) max = v;
    const top = niceMax(max);
    // Drawn at the size it is shown at, so that text is not stretched.
    const W = this.width;
    const x = (t) => PAD.left + ((t - from) / this.span) * (W - PAD.left - PAD.right);
    const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
    // The axes change only with the scale or the size: redrawn then, not every second.
    const key = `${W} ${top} ${max > 0}`;
    if (key !== this.gridKey) {
      this.gridKey = key;
      this.svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
      this.drawGrid(W, top, max, y);
    }
    // At most one point per 2 pixels: the highest of those it stands for, so peaks show.
    const buckets = Math.max(1, Math.floor((W - PAD.left - PAD.right) / 2));
    const per = Math.max(1, Math.ceil(shown.length / buckets));
    const thinned = [];
    for (let i = 0; i < shown.length; i += per) {
      const group = shown.slice(i, i + per);
      thinned.push({
        t: group[group.length - 1].t,
        values: this.series.map((_, s) => Math.max(...group.map((p) => p.values[s]))),
      });
    }
    this.series.forEach((s, i) => {
      const pts = thinned.map((p) => `${x(p.t).toFixed(1)},${y(p.values[i]).toFixed(1)}`);
      this.lines[i].setAttribute('points', pts.join(' '));
    });
    const last = shown.length ? shown[shown.length - 1].values : this.series.map(() => 0);
    const texts = this.series.map((s, i) => `${s.name} ${this.format(last[i])}`);
    texts.forEach((t, i) => {
      if (this.keys[i].textContent !== t) this.keys[i].textContent = t;
    });
    this.svgTitle.textContent = `${this.title}: now ${texts.join(', ')}`;
  }

  drawGrid(W, top, max, y) {
    this.grid.replaceChildren();
    // Nothing to show yet: the scale is 0 to 1, without a halfway mark that rounds badly.
    for (const f of max > 0 ? [0, 0.5, 1] : [0, 1]) {
      const yy = y(top * f);
      this.grid.append(el('line', { x1: PAD.left, x2: W - PAD.right, y1: yy, y2: yy }));
      const label = el('text', { x: PAD.left - 4, y: yy + 4, 'text-anchor': 'end' });
      label.textContent = this.format(top * f);
      this.grid.append(label);
    }
    const minutes = Math.round(this.span / 60000);
    const left = el('text', { x: PAD.left, y: H - 4 });
    left.textContent = `−${minutes} min`;
    const right = el('text', { x: W - PAD.right, y: H - 4, 'text-anchor': 'end' });
    right.textContent = 'now';
    this.grid.append(left, right);
  }
}
