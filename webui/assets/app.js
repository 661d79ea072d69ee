// banyan web UI. Reads the root's JSON API and draws everything itself (tables, SVG charts, the
// tree). Every string from outside (nodes, jobs, metrics, alarms, actions' output, the audit log)
// goes into the page as text: textContent, createTextNode or setAttribute, never as markup.
'use strict';
(() => {
  const SVGNS = 'http://www.w3.org/2000/svg';
  const view = document.getElementById('view');
  const conn = document.getElementById('conn');
  const TOKEN_KEY = 'banyan.adminToken';
  const POLL_MS = 1500;
  // Counters are charted as their rate over this window.
  const RATE_WINDOW_MS = 3000;
  // Bumped at each page change: the pollers of the page left behind stop.
  let gen = 0;
  // Node names sort as operators read them: cn2 before cn10.
  const natural = new Intl.Collator(undefined, { numeric: true });

  // ----- DOM helpers (text only) -------------------------------------------------------------

  function setAttrs(e, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
  }
  function add(e, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      e.appendChild(typeof k === 'object' ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    return add(e, kids);
  }
  function s(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    return add(e, kids);
  }
  function setText(e, t) {
    t = String(t);
    if (e.textContent !== t) e.textContent = t;
  }
  function clear(e) {
    while (e.firstChild) e.removeChild(e.firstChild);
  }
  function replace(e, ...kids) {
    clear(e);
    add(e, kids);
  }
  const enc = encodeURIComponent;

  // ----- Formatting ----------------------------------------------------------------------------

  function num(v, digits = 3) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e15 || a < 1e-3)) return v.toExponential(2);
    const units = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e4, 'k']];
    for (const [u, n] of units) if (a >= u) return (v / u).toPrecision(digits) + n;
    if (Number.isInteger(v)) return String(v);
    return v.toPrecision(digits).replace(/\.?0+$/, '');
  }
  function bytes(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + ' ' + u[i];
  }
  const pct = (v) => (v === null || v === undefined ? '–' : (v * 100).toFixed(1) + '%');
  function dur(ms) {
    if (ms === null || ms === undefined) return '–';
    if (ms < 1000) return Math.round(ms) + ' ms';
    const sec = ms / 1000;
    if (sec < 60) return sec.toFixed(1) + ' s';
    if (sec < 3600) return Math.floor(sec / 60) + 'm ' + Math.floor(sec % 60) + 's';
    return Math.floor(sec / 3600) + 'h ' + Math.floor((sec % 3600) / 60) + 'm';
  }
  function when(unixSec) {
    if (!unixSec) return '–';
    const d = new Date(unixSec * 1000);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  const nowSec = () => Date.now() / 1000;

  // ----- The API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, error, detail) {
      super(`${status} ${error}${detail ? ': ' + detail : ''}`);
      this.status = status;
      this.error = error;
      this.detail = detail;
    }
  }
  async function api(path, opts) {
    const r = await fetch(path, Object.assign({ cache: 'no-store' }, opts || {}));
    const text = await r.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    if (!r.ok) {
      throw new ApiError(r.status, (body && body.error) || r.statusText, (body && body.detail) || text);
    }
    return body;
  }
  function connOk() {
    conn.classList.remove('bad');
    setText(conn, 'live · ' + new Date().toLocaleTimeString());
  }
  function connBad(e) {
    conn.classList.add('bad');
    setText(conn, e instanceof ApiError ? 'root answered ' + e.status : 'root unreachable');
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  // What to stop when the page changes (long polls in flight).
  const leaving = [];
  const onLeave = (f) => leaving.push(f);

  // The page's first data on screen, for scripts/bench-webui.
  let rendered = 0;
  function markRendered(mine) {
    if (mine === gen && rendered !== gen) {
      rendered = gen;
      performance.mark('banyan-first-render');
    }
  }

  // Runs `fn` now and every `ms` after it finished, until the page changes.
  function every(ms, fn) {
    const mine = gen;
    const tick = async () => {
      if (mine !== gen) return;
      try {
        await fn();
        if (mine === gen) connOk();
        markRendered(mine);
      } catch (e) {
        if (mine === gen) connBad(e);
      }
      if (mine === gen) setTimeout(tick, ms);
    };
    tick();
  }

  // ----- Tables that update in place ----------------------------------------------------------

  // cols: [{label, num, sort: row => value, text: row => string, href: row => string,
  //         pill: row => class, bar: row => 0..1}]; rows are keyed by key(row).
  class Table {
    constructor(cols, key, opts = {}) {
      this.cols = cols;
      this.key = key;
      this.sortCol = opts.sortCol === undefined ? -1 : opts.sortCol;
      this.sortDesc = !!opts.sortDesc;
      this.limit = opts.limit || Infinity;
      this.empty = opts.empty || 'none';
      this.rows = [];
      this.byKey = new Map();
      this.el = h('table', { id: opts.id, class: opts.wrap ? 'wrap' : null });
      const tr = h('tr');
      cols.forEach((c, i) => {
        const th = h('th', { class: (c.num ? 'num ' : '') + (c.sort ? 'sort' : '') }, c.label);
        if (c.sort) {
          th.addEventListener('click', () => {
            if (this.sortCol === i) this.sortDesc = !this.sortDesc;
            else { this.sortCol = i; this.sortDesc = !!c.num; }
            this.update(this.rows);
          });
        }
        tr.appendChild(th);
      });
      this.head = tr;
      this.body = h('tbody');
      this.emptyRow = h('tr', { class: 'empty' }, h('td', { colspan: cols.length, class: 'muted' }, this.empty));
      add(this.el, [h('thead', null, tr), this.body]);
    }
    update(rows) {
      this.rows = rows;
      let list = rows.slice();
      const c = this.cols[this.sortCol];
      if (c && c.sort) {
        const dir = this.sortDesc ? -1 : 1;
        list.sort((a, b) => {
          const x = c.sort(a), y = c.sort(b);
          if (x === y) return 0;
          if (x === null || x === undefined) return 1;
          if (y === null || y === undefined) return -1;
          if (typeof x === 'string' && typeof y === 'string') return natural.compare(x, y) * dir;
          return (x < y ? -1 : 1) * dir;
        });
      }
      Array.from(this.head.children).forEach((th, i) => {
        th.classList.toggle('asc', i === this.sortCol && !this.sortDesc);
        th.classList.toggle('desc', i === this.sortCol && this.sortDesc);
      });
      list = list.slice(0, this.limit);
      const seen = new Set();
      const order = [];
      for (const row of list) {
        const k = this.key(row);
        seen.add(k);
        let r = this.byKey.get(k);
        if (!r) {
          r = { tr: h('tr'), cells: [] };
          r.tr.setAttribute('data-key', k);
          for (const col of this.cols) {
            const td = h('td', { class: (col.num ? 'num' : '') + (col.name ? ' name' : '') + (col.bar ? ' barcell' : '') });
            r.tr.appendChild(td);
            r.cells.push(td);
          }
          this.byKey.set(k, r);
        }
        this.cols.forEach((col, i) => fillCell(r.cells[i], col, row));
        order.push(r.tr);
      }
      for (const [k, r] of this.byKey) {
        if (!seen.has(k)) { r.tr.remove(); this.byKey.delete(k); }
      }
      // Move rows only where the order changed.
      const kids = this.body.children;
      if (order.length === 0) {
        if (kids.length !== 1 || kids[0] !== this.emptyRow) replace(this.body, this.emptyRow);
        return;
      }
      if (this.emptyRow.parentNode) this.emptyRow.remove();
      order.forEach((tr, i) => {
        if (kids[i] !== tr) this.body.insertBefore(tr, kids[i] || null);
      });
    }
  }
  function fillCell(td, col, row) {
    const t = col.text ? col.text(row) : '';
    if (col.href) {
      let a = td.firstChild;
      if (!a || a.nodeName !== 'A') { clear(td); a = td.appendChild(h('a')); }
      const href = col.href(row);
      if (a.getAttribute('href') !== href) a.setAttribute('href', href);
      setText(a, t);
    } else if (col.pill) {
      let p = td.firstChild;
      if (!p || p.nodeName !== 'SPAN') { clear(td); p = td.appendChild(h('span')); }
      const cls = 'pill ' + col.pill(row);
      if (p.getAttribute('class') !== cls) p.setAttribute('class', cls);
      setText(p, t);
    } else if (col.bar) {
      let b = td.firstChild;
      if (!b || b.nodeName !== 'SPAN') { clear(td); b = td.appendChild(h('span', { class: 'bar' })); td.appendChild(document.createTextNode('')); }
      const w = Math.max(0, Math.min(1, col.bar(row) || 0));
      b.style.width = (w * 100).toFixed(1) + '%';
      if (td.lastChild.nodeType === 3 && td.lastChild.data !== ' ' + t) td.lastChild.data = ' ' + t;
    } else if (col.cell) {
      col.cell(td, row);
    } else {
      setText(td, t);
    }
  }

  // ----- Charts (SVG, own code) ---------------------------------------------------------------

  // A line chart of [t_ms, value] points. Keeps its elements and rewrites the path on update.
  class Chart {
    // `height` in pixels must be the CSS height of its svg (90, or 60 for `.chart.small`).
    constructor(title, fmt, attrs = {}, height = 90) {
      this.fmt = fmt || num;
      this.w = 320; this.h = height;
      this.cur = h('span', { class: 'cur' });
      this.sub = h('span', { class: 'muted' });
      this.path = s('path', { class: 'line' });
      this.area = s('path', { class: 'area' });
      this.maxT = s('text', { x: 2, y: 10 });
      this.minT = s('text', { x: 2, y: this.h - 3 });
      this.spanT = s('text', { x: this.w - 2, y: this.h - 3, 'text-anchor': 'end' });
      this.axis = s('line', { class: 'axis', x1: 0, y1: this.h - 0.5, x2: this.w, y2: this.h - 0.5 });
      this.svg = s('svg', { viewBox: `0 0 ${this.w} ${this.h}` },
        this.axis,
        this.area, this.path, this.maxT, this.minT, this.spanT);
      this.el = h('div', Object.assign({ class: 'chart' }, attrs),
        h('div', { class: 't' }, h('span', null, title), h('span', null, this.sub, ' ', this.cur)), this.svg);
    }
    update(points, subtitle) {
      // Drawn in the element's own pixels, so that text is never stretched.
      const w = Math.round(this.svg.clientWidth) || 320;
      if (w !== this.w) {
        this.w = w;
        this.svg.setAttribute('viewBox', `0 0 ${w} ${this.h}`);
        this.axis.setAttribute('x2', String(w));
        this.spanT.setAttribute('x', String(w - 2));
      }
      setText(this.sub, subtitle || '');
      const pts = points.filter((p) => p[1] !== null && p[1] !== undefined && Number.isFinite(p[1]));
      this.path.setAttribute('data-points', String(pts.length));
      if (pts.length === 0) {
        this.path.setAttribute('d', '');
        this.area.setAttribute('d', '');
        setText(this.cur, '–');
        return;
      }
      let lo = Infinity, hi = -Infinity;
      for (const p of pts) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); }
      lo = Math.min(lo, 0);
      if (hi === lo) hi = lo + 1;
      const t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 1);
      const pad = 12;
      const x = (t) => ((t - t0) / (t1 - t0)) * this.w;
      const y = (v) => this.h - 1 - ((v - lo) / (hi - lo)) * (this.h - pad - 2);
      let d = '';
      pts.forEach((p, i) => { d += (i ? 'L' : 'M') + x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1); });
      this.path.setAttribute('d', d);
      this.area.setAttribute('d', d + `L${x(pts[pts.length - 1][0]).toFixed(1)},${this.h}L${x(t0).toFixed(1)},${this.h}Z`);
      setText(this.cur, this.fmt(pts[pts.length - 1][1]));
      setText(this.maxT, this.fmt(hi));
      setText(this.minT, this.fmt(lo));
      setText(this.spanT, dur(t1 - t0));
    }
  }

  // Green (idle) to red (busy) for 0..1.
  function heatColor(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '#2a3440';
    const stops = [[0, [29, 59, 42]], [0.35, [76, 195, 138]], [0.7, [224, 179, 65]], [1, [229, 83, 75]]];
    v = Math.max(0, Math.min(1, v));
    for (let i = 1; i < stops.length; i++) {
      if (v <= stops[i][0]) {
        const [a, ca] = stops[i - 1], [b, cb] = stops[i];
        const f = (v - a) / (b - a);
        const c = ca.map((x, j) => Math.round(x + (cb[j] - x) * f));
        return `rgb(${c[0]},${c[1]},${c[2]})`;
      }
    }
    return 'rgb(229,83,75)';
  }

  // ----- Shared bits ---------------------------------------------------------------------------

  // Long commands are cut in tables; the job's page shows them whole.
  const shortCmd = (c) => (c && c.length > 60 ? c.slice(0, 59) + '\u2026' : c || '');
  const isJob = (d) => d.jobid !== 'main' && !d.jobid.startsWith('Node: ');
  const nodeHref = (name) => '#/node/' + enc(name);
  const jobHref = (id) => '#/job/' + enc(id);
  const profileHref = (id) => '#/profile/' + enc(id);
  // `off`: its agent left because an operator powered the node off (planned, not a failure).
  const statusPill = (st) => ({ up: 'up', joining: 'joining', lost: 'lost', stale: 'stale', off: 'off' }[st] || 'bad');

  function card(label, id) {
    const v = h('div', { class: 'v', id });
    const el = h('div', { class: 'card' }, h('div', { class: 'k' }, label), v);
    return { el, set(text, tone) { setText(v, text); el.className = 'card' + (tone ? ' ' + tone : ''); } };
  }
  function panel(title, ...kids) {
    return h('section', { class: 'panel' }, h('h2', null, title), kids);
  }
  // Fills a key/value grid; in place when the keys stay the same, so that a selection survives.
  function fillKv(kv, rows) {
    const keys = rows.map((r) => r[0]).join('\u0000');
    if (kv._keys !== keys) {
      kv._keys = keys;
      replace(kv, rows.map(([k, v]) => [h('span', { class: 'k' }, k), h('span', { class: 'v' }, v)]));
      return;
    }
    rows.forEach(([, v], i) => setText(kv.children[2 * i + 1], v));
  }
  function errorBox(id) {
    const e = h('div', { class: 'error', id, role: 'alert' });
    return { el: e, show(err) { setText(e, err ? (err instanceof ApiError ? err.message : String(err)) : ''); } };
  }
  function alarmRows(byTarget) {
    const rows = [];
    for (const [target, list] of Object.entries(byTarget || {})) {
      for (const a of list) rows.push(Object.assign({ target }, a));
    }
    return rows;
  }
  function opText(op) {
    if (!op) return '';
    if ('More' in op) return '> ' + op.More;
    if ('Less' in op) return '< ' + op.Less;
    if ('Equal' in op) return '= ' + op.Equal;
    return '';
  }
  const msWhen = (ms) => (ms ? when(ms / 1000) : '–');

  // Parses `family{a="x",b="y"}` into [family, {a: 'x', b: 'y'}].
  function parseSeries(name) {
    const i = name.indexOf('{');
    if (i < 0) return [name, {}];
    const labels = {};
    const re = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    let m;
    while ((m = re.exec(name.slice(i))) !== null) labels[m[1]] = m[2].replace(/\\(.)/g, '$1');
    return [name.slice(0, i), labels];
  }
  function reading(ctype) {
    if (!ctype) return null;
    if (ctype.Counter) return ctype.Counter.value;
    if (ctype.Gauge) return ctype.Gauge.hits ? ctype.Gauge.total / ctype.Gauge.hits : null;
    if (ctype.Histogram) return ctype.Histogram.count ? ctype.Histogram.sum / ctype.Histogram.count : 0;
    return null;
  }
  function kindOf(ctype) {
    return ctype ? Object.keys(ctype)[0].toLowerCase() : '';
  }
  function detailOf(ctype) {
    if (!ctype) return '';
    if (ctype.Gauge) { const g = ctype.Gauge; return `last ${num(g.last)} · min ${num(g.min)} · max ${num(g.max)} · n ${g.hits}`; }
    if (ctype.Histogram) { const x = ctype.Histogram; return `count ${num(x.count)} · sum ${num(x.sum)}`; }
    return '';
  }
  const fmtFor = (name) => (/bytes/.test(name) ? bytes : num);

  // ----- Node sets -------------------------------------------------------------------------------

  // Folds node names as the root does (protocol/src/nodeset.rs, `fold_names`): the last number of
  // each name into ranges, one bracket per zero padding, then, among names whose last ranges came
  // out the same, the number before it (`r[1-2]n[1-4]`). Numbers of up to 18 digits, as BigInts.
  const MAX_DIGITS = 18;
  const isDigit = (c) => c >= 48 && c <= 57;
  // `texts[0] nums[0] texts[1] ... texts[k]`; longer digit runs stay text, as in the root.
  function cutName(name) {
    const texts = [''];
    const nums = [];
    const re = /(\d+)|(\D+)/g;
    let m;
    while ((m = re.exec(name)) !== null) {
      if (m[1] !== undefined && m[1].length <= MAX_DIGITS) { nums.push(m[1]); texts.push(''); }
      else texts[texts.length - 1] += m[0];
    }
    return { texts, nums };
  }
  const isPadded = (d) => d.length > 1 && d[0] === '0';
  const cmpPlain = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  // Digit strings in groups that one bracket can write (padded ones by width, with the unpadded
  // of the same width), each sorted by value.
  function paddingGroups(nums) {
    const widths = new Set(nums.filter(isPadded).map((d) => d.length));
    const groups = new Map();
    for (const d of nums) {
      const key = isPadded(d) || widths.has(d.length) ? d.length : -1;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push([BigInt(d), d]);
    }
    return Array.from(groups.values(), (g) => g.sort((a, b) => cmpPlain(a[0], b[0]) || cmpPlain(a[1], b[1])));
  }
  function bracket(group) {
    if (group.length === 1) return group[0][1];
    let out = '[';
    for (let i = 0; i < group.length;) {
      let j = i;
      while (j + 1 < group.length && group[j + 1][0] === group[j][0] + 1n) j++;
      out += (i ? ',' : '') + group[i][1] + (j > i ? '-' + group[j][1] : '');
      i = j + 1;
    }
    return out + ']';
  }
  function assemble(texts, nums, tail) {
    const all = nums.concat(tail);
    let out = '';
    texts.forEach((t, i) => { out += t + (i < all.length ? all[i] : ''); });
    return out;
  }
  // Node names in the root's order: numbers by value, then the less padded first.
  function naturalCmp(a, b) {
    let i = 0, j = 0, padding = 0;
    for (;;) {
      if (i >= a.length || j >= b.length) {
        if (i >= a.length && j >= b.length) return padding || cmpPlain(a, b);
        return i >= a.length ? -1 : 1;
      }
      const p = a.charCodeAt(i), q = b.charCodeAt(j);
      if (isDigit(p) && isDigit(q)) {
        let ei = i, ej = j;
        while (ei < a.length && isDigit(a.charCodeAt(ei))) ei++;
        while (ej < b.length && isDigit(b.charCodeAt(ej))) ej++;
        const x = a.slice(i, ei).replace(/^0+/, ''), y = b.slice(j, ej).replace(/^0+/, '');
        const byValue = x.length - y.length || cmpPlain(x, y);
        if (byValue) return Math.sign(byValue);
        if (!padding) padding = Math.sign((ei - i) - (ej - j));
        i = ei; j = ej;
      } else {
        if (p !== q) return p < q ? -1 : 1;
        i++; j++;
      }
    }
  }
  function foldNodes(names) {
    // Each term with the first name it stands for, for ordering.
    const terms = [];
    const byLast = new Map();
    for (const name of new Set(names)) {
      const { texts, nums } = cutName(name);
      const last = nums.pop();
      if (last === undefined) { terms.push([name, name]); continue; }
      const k = JSON.stringify([texts, nums]);
      if (!byLast.has(k)) byLast.set(k, { texts, nums, lasts: [] });
      byLast.get(k).lasts.push(last);
    }
    const bySecond = new Map();
    for (const { texts, nums, lasts } of byLast.values()) {
      for (const group of paddingGroups(lasts)) {
        const last = bracket(group);
        const firstLast = group[0][1];
        if (!nums.length) {
          terms.push([assemble(texts, nums, [firstLast]), assemble(texts, nums, [last])]);
          continue;
        }
        const prefix = nums.slice(0, -1);
        const k = JSON.stringify([texts, prefix, last, firstLast]);
        if (!bySecond.has(k)) bySecond.set(k, { texts, prefix, last, firstLast, seconds: [] });
        bySecond.get(k).seconds.push(nums[nums.length - 1]);
      }
    }
    for (const e of bySecond.values()) {
      for (const group of paddingGroups(e.seconds)) {
        terms.push([assemble(e.texts, e.prefix, [group[0][1], e.firstLast]), assemble(e.texts, e.prefix, [bracket(group), e.last])]);
      }
    }
    terms.sort((a, b) => naturalCmp(a[0], b[0]) || cmpPlain(a[1], b[1]));
    return terms.map((t) => t[1]).join(',');
  }

  // ----- Overview ------------------------------------------------------------------------------

  function pageOverview() {
    const c = {
      up: card('Nodes up', 'ov-up'), joining: card('Joining'), lost: card('Lost'), stale: card('Stale', 'ov-stale'), off: card('Powered off', 'ov-off'),
      depth: card('Tree depth', 'ov-depth'), wave: card('Last wave, age', 'ov-wave'), latency: card('Wave latency'),
      jobs: card('Jobs running', 'ov-njobs'), alarms: card('Alarms raised', 'ov-nalarms'),
    };
    const busy = new Table([
      { label: 'Node', name: true, text: (n) => n.name, href: (n) => nodeHref(n.name) },
      { label: 'CPU', num: false, bar: (n) => n.digest && n.digest.cpu, text: (n) => pct(n.digest && n.digest.cpu) },
      { label: 'Memory', num: true, text: (n) => pct(n.digest && n.digest.memory) },
      { label: 'Load', num: true, text: (n) => num(n.digest && n.digest.load1) },
      { label: 'Net rx/s', num: true, text: (n) => bytes(n.digest && n.digest.net_rx_bps) },
    ], (n) => n.name, { id: 'ov-busiest', empty: 'no node has reported yet' });
    const jobs = new Table([
      { label: 'Job', name: true, text: (j) => j.jobid, href: (j) => jobHref(j.jobid) },
      { label: 'Command', name: true, text: (j) => shortCmd(j.command) },
      { label: 'Size', num: true, text: (j) => j.size },
      { label: 'Running for', num: true, text: (j) => (j.start_time ? dur((nowSec() - j.start_time) * 1000) : '–') },
    ], (j) => j.jobid, { id: 'ov-jobs', empty: 'no job running' });
    const alarms = new Table([
      { label: 'Target', name: true, text: (a) => a.target },
      { label: 'Alarm', name: true, text: (a) => a.name },
      { label: 'Condition', name: true, text: (a) => a.metric + ' ' + opText(a.operator) },
      { label: 'Value', num: true, text: (a) => num(a.current) },
      { label: 'Since', text: (a) => msWhen(a.raised_at) },
    ], (a) => a.target + '\u0000' + a.name, { id: 'ov-alarms', empty: 'no alarm raised' });
    // The cluster's main series over time (`/job/history?job=main`), one small chart each.
    const mainSeries = [
      ['cpu', 'CPU (mean)', pct], ['memory', 'Memory (mean)', pct], ['net_rx_bps', 'Network in /s', bytes],
      ['net_tx_bps', 'Network out /s', bytes], ['jobs_running', 'Running jobs', num],
    ];
    const mainCharts = mainSeries.map(([name, title, fmt]) => [name, new Chart(title, fmt, { 'data-series': name, class: 'chart small' }, 60)]);
    const historyNote = h('p', { class: 'muted', id: 'ov-history-note' });
    replace(view,
      h('h1', null, 'Overview', h('span', { class: 'sub', id: 'ov-root' })),
      h('div', { class: 'cards' }, Object.values(c).map((x) => x.el)),
      panel('Cluster over time', h('div', { class: 'charts small', id: 'ov-history' }, mainCharts.map(([, ch]) => ch.el)), historyNote),
      h('div', { class: 'grid' },
        panel('Busiest nodes (CPU)', busy.el),
        panel('Running jobs', jobs.el)),
      h('div', { class: 'grid' }, panel('Raised alarms', alarms.el)));
    const rootName = document.getElementById('ov-root');
    every(POLL_MS, async () => {
      const r = await api('/job/history?job=main');
      const hist = r.history || { series: [], points: [] };
      const pts = hist.points || [];
      setText(historyNote, pts.length ? '' : 'no points yet: the root keeps one per wave from its start');
      for (const [name, ch] of mainCharts) {
        const i = (hist.series || []).findIndex((x) => x.name === name);
        ch.update(i < 0 ? [] : pts.map((p) => [p.t_ms, p.values[i]]));
      }
    });
    every(POLL_MS, async () => {
      const [st, nodes, list, raised] = await Promise.all([api('/status'), api('/nodes'), api('/job/list'), api('/alarms')]);
      setText(rootName, 'root ' + st.root);
      c.up.set(st.nodes_up, 'ok');
      c.joining.set(st.nodes_joining, st.nodes_joining ? 'warn' : '');
      c.lost.set(st.nodes_lost, st.nodes_lost ? 'warn' : '');
      c.stale.set(st.nodes_stale, st.nodes_stale ? 'bad' : '');
      c.off.set(st.nodes_off || 0);
      c.depth.set(st.depth);
      const w = st.last_wave;
      c.wave.set(w ? dur(w.age_ms) : 'none', w && w.age_ms > 5000 ? 'bad' : '');
      c.latency.set(w ? dur(w.latency_ms) : '–');
      const withCpu = nodes.filter((n) => n.digest);
      withCpu.sort((a, b) => b.digest.cpu - a.digest.cpu);
      busy.update(withCpu.slice(0, 10));
      const running = list.filter(isJob);
      c.jobs.set(running.length);
      jobs.update(running);
      const ar = alarmRows(raised);
      c.alarms.set(ar.length, ar.length ? 'bad' : 'ok');
      alarms.update(ar);
    });
  }

  // ----- Nodes ---------------------------------------------------------------------------------

  function nodeColumns() {
    const d = (n, k) => (n.digest ? n.digest[k] : null);
    return [
      { label: 'Node', name: true, sort: (n) => n.name, text: (n) => n.name, href: (n) => nodeHref(n.name) },
      { label: 'Status', sort: (n) => n.status, text: (n) => n.status, pill: (n) => statusPill(n.status) },
      { label: 'CPU', num: true, sort: (n) => d(n, 'cpu'), text: (n) => pct(d(n, 'cpu')) },
      { label: 'Memory', num: true, sort: (n) => d(n, 'memory'), text: (n) => pct(d(n, 'memory')) },
      { label: 'Load 1m', num: true, sort: (n) => d(n, 'load1'), text: (n) => num(d(n, 'load1')) },
      { label: 'Net rx/s', num: true, sort: (n) => d(n, 'net_rx_bps'), text: (n) => bytes(d(n, 'net_rx_bps')) },
      { label: 'Net tx/s', num: true, sort: (n) => d(n, 'net_tx_bps'), text: (n) => bytes(d(n, 'net_tx_bps')) },
      { label: 'Depth', num: true, sort: (n) => n.depth, text: (n) => n.depth },
      { label: 'Parent', name: true, sort: (n) => n.parent, text: (n) => n.parent || '–' },
      { label: 'Sample age', num: true, sort: (n) => n.age_ms, text: (n) => dur(n.age_ms) },
      { label: 'Scrape errors', num: true, sort: (n) => (n.digest ? n.digest.scrape_errors.length : 0), text: (n) => (n.digest ? n.digest.scrape_errors.length : '–') },
    ];
  }

  // A heat map of nodes: one square each, colour by `metric`, click opens the node.
  class HeatMap {
    constructor() {
      this.svg = s('svg', { class: 'heat', id: 'heatmap', role: 'img' });
      this.cells = new Map();
      this.layoutKey = '';
    }
    update(nodes, metric) {
      nodes = nodes.slice().sort((a, b) => natural.compare(a.name, b.name));
      const n = nodes.length;
      const W = 1200;
      const cols = Math.max(1, Math.min(n, Math.ceil(Math.sqrt(n * 6))));
      const size = Math.max(6, Math.min(28, Math.floor(W / cols)));
      const rows = Math.ceil(n / cols);
      const key = nodes.map((x) => x.name).join('\u0000') + '|' + size;
      if (key !== this.layoutKey) {
        this.layoutKey = key;
        clear(this.svg);
        this.cells.clear();
        this.svg.setAttribute('viewBox', `0 0 ${cols * size} ${Math.max(rows * size, size)}`);
        this.svg.setAttribute('height', String(Math.max(rows * size, size)));
        this.svg.setAttribute('width', String(cols * size));
        nodes.forEach((node, i) => {
          const title = s('title');
          const a = s('a', { href: nodeHref(node.name) },
            s('rect', { x: (i % cols) * size, y: Math.floor(i / cols) * size, width: size - 1, height: size - 1, rx: 1 }, title));
          a.setAttribute('data-node', node.name);
          this.svg.appendChild(a);
          this.cells.set(node.name, { rect: a.firstChild, title });
        });
      }
      for (const node of nodes) {
        const c = this.cells.get(node.name);
        if (!c) continue;
        const v = node.digest && node.status === 'up' ? node.digest[metric] : null;
        const fill = node.status === 'up' ? heatColor(v) : node.status === 'stale' ? '#5a1f1c' : node.status === 'off' ? '#20262d' : '#3b2a4d';
        if (c.rect.getAttribute('fill') !== fill) c.rect.setAttribute('fill', fill);
        setText(c.title, `${node.name} · ${node.status} · ${metric} ${pct(v)}`);
      }
    }
  }

  function pageNodes() {
    const filter = h('input', { class: 'mono', id: 'node-filter', size: 28, placeholder: 'node set, e.g. cn[1-32]', spellcheck: 'false' });
    const metric = h('select', { id: 'heat-metric' }, h('option', { value: 'cpu' }, 'CPU'), h('option', { value: 'memory' }, 'Memory'));
    const count = h('span', { class: 'muted', id: 'node-count' });
    const err = errorBox('node-filter-error');
    const table = new Table(nodeColumns(), (n) => n.name, { id: 'nodes-table', sortCol: 0, empty: 'no node matches' });
    const heat = new HeatMap();
    const saved = sessionStorage.getItem('banyan.nodeFilter') || '';
    filter.value = saved;
    let expr = saved.trim();
    let last = [];
    replace(view,
      h('h1', null, 'Nodes'),
      h('div', { class: 'toolbar' }, filter, count, err.el),
      panel('Heat map', h('div', { class: 'toolbar' }, 'Colour by', metric,
        h('span', { class: 'legend' }, '0%', h('span', { class: 'ramp' }), '100%', ' · lost/stale dark, powered off grey')), heat.svg),
      h('div', { style: null }, panel('All nodes', table.el)));
    let timer = null;
    filter.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(() => { expr = filter.value.trim(); sessionStorage.setItem('banyan.nodeFilter', expr); refresh(); }, 250);
    });
    metric.addEventListener('change', () => heat.update(last, metric.value));
    const refresh = async () => {
      const want = expr;
      try {
        const nodes = await api('/nodes' + (want ? '?nodes=' + enc(want) : ''));
        if (want !== expr) return;
        err.show(null);
        filter.classList.remove('bad');
        last = nodes;
        table.update(nodes);
        heat.update(nodes, metric.value);
        const up = nodes.filter((n) => n.status === 'up').length;
        setText(count, `${nodes.length} node${nodes.length === 1 ? '' : 's'} · ${up} up`);
      } catch (e) {
        if (e instanceof ApiError && e.status === 400) { err.show(e); return; }
        throw e;
      }
    };
    every(POLL_MS, refresh);
  }

  function pageNode(name) {
    const head = h('span', { class: 'sub', id: 'node-status' });
    const kv = h('div', { class: 'kv inline', id: 'node-kv' });
    const charts = {
      cpu: new Chart('CPU', pct), memory: new Chart('Memory', pct), load1: new Chart('Load 1m', num),
      net_rx_bps: new Chart('Net rx/s', bytes), net_tx_bps: new Chart('Net tx/s', bytes),
    };
    const series = Object.fromEntries(Object.keys(charts).map((k) => [k, []]));
    const metricFilter = h('input', { class: 'mono', placeholder: 'filter metrics', id: 'metric-filter' });
    const err = errorBox('node-error');
    const metrics = new Table([
      { label: 'Metric', name: true, sort: (m) => m.name, text: (m) => m.name },
      { label: 'Type', sort: (m) => kindOf(m.ctype), text: (m) => kindOf(m.ctype) },
      { label: 'Value', num: true, sort: (m) => reading(m.ctype), text: (m) => fmtFor(m.name)(reading(m.ctype)) },
      { label: 'Detail', text: (m) => detailOf(m.ctype) },
      { label: 'Help', text: (m) => m.doc },
    ], (m) => m.name, { id: 'node-metrics', sortCol: 0, wrap: true, empty: 'no metrics yet' });
    let allMetrics = [];
    const showMetrics = () => {
      const f = metricFilter.value.trim().toLowerCase();
      metrics.update(f ? allMetrics.filter((m) => m.name.toLowerCase().includes(f)) : allMetrics);
    };
    metricFilter.addEventListener('input', showMetrics);
    replace(view,
      h('h1', null, h('span', { id: 'node-name', class: 'mono' }, name), head),
      err.el,
      panel('Node', kv), h('p'),
      nodePower(name), h('p'),
      nodeCloud(name),
      nodeGuests(name), h('p'),
      panel('Digest over time (since this page opened)', h('div', { class: 'charts' }, Object.values(charts).map((c) => c.el))), h('p'),
      panel('All metrics of the node (fetched through the tree)', h('div', { class: 'toolbar' }, metricFilter), metrics.el));
    every(POLL_MS, async () => {
      let nodes;
      try { nodes = await api('/nodes?nodes=' + enc(name)); } catch (e) {
        // A name the node-set syntax cannot spell: take the whole list.
        if (!(e instanceof ApiError && e.status === 400)) throw e;
        nodes = await api('/nodes');
      }
      const n = nodes.find((x) => x.name === name);
      if (!n) { err.show('no node ' + JSON.stringify(name) + ' in /nodes'); return; }
      replace(head, h('span', { class: 'pill ' + statusPill(n.status) }, n.status));
      replace(kv, [['parent', n.parent || '–'], ['depth', n.depth], ['sample age', dur(n.age_ms)],
        ['scrape errors', n.digest ? n.digest.scrape_errors.map((e) => e[0] + ': ' + e[1]).join('; ') || 'none' : '–']]
        .map(([k, v]) => [h('span', { class: 'k' }, k), h('span', { class: 'v' }, v)]));
      if (n.digest) {
        const t = Date.now();
        for (const k of Object.keys(charts)) {
          series[k].push([t, n.digest[k]]);
          if (series[k].length > 600) series[k].shift();
          charts[k].update(series[k]);
        }
      }
    });
    every(3000, async () => {
      try {
        const job = await api('/job?job=' + enc('Node: ' + name));
        err.show(null);
        allMetrics = job.counters || [];
        showMetrics();
      } catch (e) {
        err.show(e);
      }
    });
  }

  // ----- Jobs ----------------------------------------------------------------------------------

  function pageJobs() {
    const running = new Table([
      { label: 'Job', name: true, sort: (j) => j.jobid, text: (j) => j.jobid, href: (j) => jobHref(j.jobid) },
      { label: 'Command', name: true, sort: (j) => j.command, text: (j) => shortCmd(j.command) },
      { label: 'Size', num: true, sort: (j) => j.size, text: (j) => j.size },
      { label: 'Nodes', name: true, text: (j) => j.nodelist },
      { label: 'Partition', text: (j) => j.partition },
      { label: 'Started', sort: (j) => j.start_time, text: (j) => when(j.start_time) },
      { label: 'Running for', num: true, text: (j) => (j.start_time ? dur((nowSec() - j.start_time) * 1000) : '–') },
    ], (j) => j.jobid, { id: 'jobs-running', sortCol: 5, sortDesc: true, empty: 'no job running' });
    const finished = new Table([
      { label: 'Job', name: true, sort: (j) => j.jobid, text: (j) => j.jobid, href: (j) => profileHref(j.jobid) },
      { label: 'Command', name: true, sort: (j) => j.command, text: (j) => shortCmd(j.command) },
      { label: 'Size', num: true, sort: (j) => j.size, text: (j) => j.size },
      { label: 'Started', sort: (j) => j.start_time, text: (j) => when(j.start_time) },
      { label: 'Ended', sort: (j) => j.end_time, text: (j) => when(j.end_time) },
      { label: 'Duration', num: true, sort: (j) => j.end_time - j.start_time, text: (j) => dur((j.end_time - j.start_time) * 1000) },
    ], (j) => j.jobid, { id: 'jobs-finished', sortCol: 4, sortDesc: true, empty: 'no finished job' });
    const byCmd = new Table([
      { label: 'Command', name: true, sort: (g) => g.command, text: (g) => shortCmd(g.command) },
      { label: 'Runs', num: true, sort: (g) => g.runs.length, text: (g) => g.runs.length },
      { label: 'Mean', num: true, sort: (g) => g.mean, text: (g) => dur(g.mean * 1000) },
      { label: 'Fastest', num: true, sort: (g) => g.min, text: (g) => dur(g.min * 1000) },
      { label: 'Slowest', num: true, sort: (g) => g.max, text: (g) => dur(g.max * 1000) },
      {
        label: 'Last runs', cell: (td, g) => {
          const sig = g.runs.map((r) => r.jobid).join('\u0000');
          if (td.getAttribute('data-sig') === sig) return;
          td.setAttribute('data-sig', sig);
          replace(td, g.runs.slice(-8).reverse().map((r, i) => [i ? ' · ' : '', h('a', { href: profileHref(r.jobid), class: 'mono' }, r.jobid), h('span', { class: 'muted' }, ' ' + dur((r.end_time - r.start_time) * 1000))]));
        },
      },
    ], (g) => g.command, { id: 'jobs-percmd', sortCol: 1, sortDesc: true, wrap: true, empty: 'no finished job' });
    replace(view, h('h1', null, 'Jobs'),
      panel('Running', running.el), h('p'),
      panel('Finished', finished.el), h('p'),
      panel('Finished, by command (compare runs of one program)', byCmd.el));
    every(POLL_MS, async () => {
      const list = await api('/job/list');
      running.update(list.filter(isJob));
    });
    every(3000, async () => {
      const [done, percmd] = await Promise.all([api('/profiles'), api('/profiles/percmd')]);
      finished.update(done);
      byCmd.update(Object.entries(percmd).map(([command, runs]) => {
        const d = runs.map((r) => r.end_time - r.start_time);
        return { command, runs, mean: d.reduce((a, b) => a + b, 0) / Math.max(1, d.length), min: Math.min(...d), max: Math.max(...d) };
      }));
    });
  }

  // The MPI and I/O breakdown: one row per `function` label, one column per family.
  function breakdown(counters, prefix) {
    const fams = new Set();
    const rows = new Map();
    for (const c of counters) {
      const [fam, labels] = parseSeries(c.name);
      if (!fam.startsWith(prefix) || labels.function === undefined) continue;
      fams.add(fam);
      const r = rows.get(labels.function) || { fn: labels.function };
      r[fam] = (r[fam] || 0) + (reading(c.ctype) || 0);
      rows.set(labels.function, r);
    }
    return { fams: Array.from(fams).sort(), rows: Array.from(rows.values()) };
  }
  const shortFam = (fam, prefix) => fam.slice(prefix.length).replace(/_total$/, '').replace(/_/g, ' ');

  class Breakdown {
    constructor(prefix, id) {
      this.prefix = prefix;
      this.id = id;
      this.el = h('div');
      this.sig = '';
      this.table = null;
    }
    update(counters) {
      const b = breakdown(counters, this.prefix);
      const sig = b.fams.join(',');
      if (sig !== this.sig || !this.table) {
        this.sig = sig;
        const timeFam = b.fams.find((f) => f.endsWith('seconds_total'));
        const cols = [{ label: 'Function', name: true, sort: (r) => r.fn, text: (r) => r.fn }];
        if (timeFam) cols.push({ label: 'Share of time', bar: (r) => r[timeFam] / (this.total || 1), text: (r) => pct(r[timeFam] / (this.total || 1)) });
        for (const f of b.fams) cols.push({ label: shortFam(f, this.prefix), num: true, sort: (r) => r[f] || 0, text: (r) => fmtFor(f)(r[f] || 0) });
        this.timeFam = timeFam;
        this.table = new Table(cols, (r) => r.fn, { id: this.id, sortCol: timeFam ? 2 + b.fams.indexOf(timeFam) : 1, sortDesc: true, empty: 'no ' + this.prefix + '* series' });
        replace(this.el, this.table.el);
      }
      this.total = this.timeFam ? b.rows.reduce((a, r) => a + (r[this.timeFam] || 0), 0) : 0;
      this.table.update(b.rows);
    }
  }

  function pageJob(id, asProfile) {
    const state = h('span', { class: 'sub', id: 'job-state' });
    const kv = h('div', { class: 'kv', id: 'job-kv' });
    const err = errorBox('job-error');
    const chartsEl = h('div', { class: 'charts', id: 'job-charts' });
    const charts = new Map();
    const mpi = new Breakdown('banyan_mpi_', 'job-mpi');
    const io = new Breakdown('banyan_io_', 'job-io');
    const famSel = h('select', { id: 'dist-metric' });
    const distNote = h('div', { class: 'note', id: 'dist-note' });
    const dist = new Table([
      { label: 'Node', name: true, sort: (r) => r.name, text: (r) => r.name, href: (r) => nodeHref(r.name) },
      { label: 'Ranks', num: true, sort: (r) => r.ranks, text: (r) => r.ranks },
      { label: 'Processes', num: true, sort: (r) => r.processes, text: (r) => r.processes || 0 },
      { label: 'Value', bar: (r) => r.v / (dist.max || 1), text: (r) => fmtFor(famSel.value)(r.v) },
      { label: 'vs median', num: true, sort: (r) => r.rel, text: (r) => (r.rel === null ? '–' : (r.rel * 100).toFixed(0) + '%') },
    ], (r) => r.name, { id: 'job-dist', sortCol: 3, sortDesc: true, empty: 'no per-node values' });
    dist.cols[3].sort = (r) => r.v;
    const others = new Table([
      { label: 'Metric', name: true, sort: (m) => m.name, text: (m) => m.name },
      { label: 'Type', text: (m) => kindOf(m.ctype) },
      { label: 'Value', num: true, sort: (m) => reading(m.ctype), text: (m) => fmtFor(m.name)(reading(m.ctype)) },
      { label: 'Detail', text: (m) => detailOf(m.ctype) },
    ], (m) => m.name, { id: 'job-metrics', sortCol: 0, wrap: true, empty: 'no series yet' });
    replace(view,
      h('h1', null, h('span', { id: 'job-id', class: 'mono' }, id), state),
      err.el,
      h('div', { class: 'grid' }, panel('Job', kv), panel('Per-node distribution', h('div', { class: 'toolbar' }, 'Metric', famSel), distNote, dist.el)),
      panel('Over the job\u2019s life (counters as rates per second over 3 s)', chartsEl), h('p'),
      h('div', { class: 'grid' }, panel('MPI by function', mpi.el), panel('I/O by function', io.el)),
      panel('Every series', others.el));
    let running = !asProfile;
    let lastNodes = null;
    const showDist = () => {
      if (!lastNodes) return;
      const fam = famSel.value;
      const rows = lastNodes.nodes.map((n) => ({ name: n.name, ranks: n.ranks, processes: n.processes, v: n.values[fam] || 0 }));
      const sorted = rows.map((r) => r.v).sort((a, b) => a - b);
      const med = sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
      dist.max = Math.max(0, ...rows.map((r) => r.v));
      for (const r of rows) r.rel = med ? r.v / med : null;
      dist.update(rows);
    };
    famSel.addEventListener('change', showDist);
    every(POLL_MS, async () => {
      let job;
      try { job = await api('/job?job=' + enc(id)); } catch (e) { err.show(e); if (e instanceof ApiError) return; throw e; }
      err.show(null);
      const d = job.desc;
      const hist = await api('/job/history?job=' + enc(id)).catch(() => null);
      running = hist ? hist.running : running;
      replace(state, h('span', { class: 'pill ' + (running ? 'running' : 'finished') }, running ? 'running' : 'finished'));
      let prof = null;
      if (!running) prof = await api('/profiles/get?jobid=' + enc(id)).catch(() => null);
      const ranks = prof && prof.ranks;
      const procs = prof && prof.processes;
      const rows = [['command', d.command || '–'], ['size', d.size], ['nodes', d.nodelist || '–'], ['partition', d.partition || '–'],
        ['cluster', d.cluster || '–'], ['run dir', d.run_dir || '–'], ['started', when(d.start_time)],
        [running ? 'running for' : 'ended', running ? (d.start_time ? dur((nowSec() - d.start_time) * 1000) : '–') : when(d.end_time) + ' (' + dur((d.end_time - d.start_time) * 1000) + ')']];
      if (ranks) rows.push(['ranks', `${ranks.started} started · ${ranks.ended} ended · ${ranks.crashed} crashed · ${ranks.lost} lost`]);
      if (procs && procs.started) rows.push(['processes', `${procs.started} started by the ranks · ${procs.ended} ended · ${procs.crashed} crashed · ${procs.lost} lost`]);
      replace(kv, rows.map(([k, v]) => [h('span', { class: 'k' }, k), h('span', { class: 'v' }, v)]));
      const counters = job.counters || [];
      mpi.update(counters);
      io.update(counters);
      others.update(counters);
      if (hist) drawHistory(hist.history);
    });
    function drawHistory(hist) {
      const pts = hist.points || [];
      hist.series.forEach((ser, i) => {
        if (ser.name.startsWith('banyan_job_ranks_') || ser.name.startsWith('banyan_job_processes_')) return;
        let c = charts.get(ser.name);
        const cumulative = ser.kind !== 'gauge';
        if (!c) {
          c = new Chart(ser.name + (cumulative ? ' /s' : ''), fmtFor(ser.name), { 'data-series': ser.name });
          charts.set(ser.name, c);
          chartsEl.appendChild(c.el);
        }
        let line;
        if (cumulative) {
          // Rates over a few seconds back: ranks and waves tick at different periods, and a
          // rate between two neighbouring points alone would zigzag.
          line = [];
          let j = 0;
          for (let k = 1; k < pts.length; k++) {
            const b = pts[k];
            const vb = b.values[i];
            if (vb === null || vb === undefined) continue;
            while (j < k - 1 && b.t_ms - pts[j + 1].t_ms >= RATE_WINDOW_MS) j++;
            const a = pts[j];
            const dt = (b.t_ms - a.t_ms) / 1000;
            if (dt > 0) line.push([b.t_ms, Math.max(0, (vb - (a.values[i] || 0)) / dt)]);
          }
        } else {
          line = pts.map((p) => [p.t_ms, p.values[i]]);
        }
        const last = pts.length ? pts[pts.length - 1].values[i] : null;
        c.update(line, cumulative ? 'total ' + fmtFor(ser.name)(last) + ' ·' : '');
      });
      if (!chartsEl.firstChild) chartsEl.appendChild(h('p', { class: 'muted' }, 'no points yet'));
      else if (chartsEl.firstChild.nodeName === 'P' && charts.size) chartsEl.firstChild.remove();
    }
    every(4000, async () => {
      if (!running) {
        setText(distNote, 'Per-node values are kept only while the job runs.');
        famSel.parentNode.hidden = true;
        dist.update([]);
        return;
      }
      const r = await api('/job/nodes?job=' + enc(id)).catch((e) => { setText(distNote, e.message); return null; });
      if (!r) return;
      lastNodes = r;
      const fams = new Set();
      r.nodes.forEach((n) => Object.keys(n.values).forEach((f) => { if (!f.startsWith('banyan_job_')) fams.add(f); }));
      const list = Array.from(fams).sort();
      const have = Array.from(famSel.options).map((o) => o.value);
      if (list.join(',') !== have.join(',')) {
        const keep = famSel.value;
        replace(famSel, list.map((f) => h('option', { value: f }, f)));
        const pref = [keep, 'banyan_mpi_seconds_total', 'banyan_io_seconds_total', 'banyan_proc_user_seconds_total'].find((f) => list.includes(f));
        if (pref) famSel.value = pref;
      }
      setText(distNote, r.unreachable.length ? r.unreachable.length + ' node(s) did not answer: ' + r.unreachable.join(', ') : `${r.nodes.length} node(s); \u201cvs median\u201d makes a slow or idle node stand out`);
      showDist();
    });
  }

  // ----- Topology --------------------------------------------------------------------------------

  function pageTopology() {
    const cards = { up: card('Up'), joining: card('Joining'), lost: card('Lost'), stale: card('Stale'), off: card('Powered off'), depth: card('Depth') };
    const box = h('div', { class: 'tree', id: 'tree' });
    const find = h('input', { class: 'mono', placeholder: 'find a node', id: 'tree-find' });
    const collapsed = new Set();
    let firstDraw = true;
    let data = null;
    let sig = '';
    let highlight = '';
    const expandAll = h('button', { type: 'button' }, 'Expand all');
    const collapseDeep = h('button', { type: 'button' }, 'Collapse below depth 3');
    replace(view, h('h1', null, 'Topology', h('span', { class: 'sub' }, 'the reduction tree; click a node\u2019s arrow to fold its subtree')),
      h('div', { class: 'cards' }, Object.values(cards).map((c) => c.el)),
      h('div', { class: 'toolbar' }, expandAll, collapseDeep, find, h('span', { class: 'legend' },
        svgDot('up'), 'up', svgDot('joining'), 'joining', svgDot('lost'), 'lost (may return)', svgDot('stale'), 'stale', svgDot('off'), 'powered off')),
      box);
    function svgDot(st) { return s('svg', { width: 10, height: 10 }, s('circle', { cx: 5, cy: 5, r: 4, class: 'dot-' + st })); }
    expandAll.addEventListener('click', () => { collapsed.clear(); draw(); });
    collapseDeep.addEventListener('click', () => { collapseBelow(3); draw(); });
    find.addEventListener('change', () => {
      highlight = find.value.trim();
      if (!data || !highlight) { draw(); return; }
      // Unfold the way to it.
      const byName = new Map(data.nodes.map((n) => [n.name, n]));
      let n = byName.get(highlight);
      while (n && n.parent) { collapsed.delete(n.parent); n = byName.get(n.parent); }
      draw();
      const t = box.querySelector('[data-hit="1"]');
      if (t) t.scrollIntoView({ block: 'center' });
    });
    function kids() {
      const m = new Map();
      for (const n of data.nodes) m.set(n.name, (n.children || []).slice().sort());
      return m;
    }
    function collapseBelow(depth) {
      collapsed.clear();
      const k = kids();
      const walk = (name, d) => { const c = k.get(name) || []; if (d >= depth && c.length) collapsed.add(name); c.forEach((x) => walk(x, d + 1)); };
      walk(data.root, 0);
    }
    function draw() {
      if (!data) return;
      const k = kids();
      const byName = new Map(data.nodes.map((n) => [n.name, n]));
      const count = new Map();
      const size = (name, seen) => {
        if (count.has(name)) return count.get(name);
        if (seen.has(name)) return 0;
        seen.add(name);
        let t = 0;
        for (const c of k.get(name) || []) t += 1 + size(c, seen);
        count.set(name, t);
        return t;
      };
      const rows = [];
      const visited = new Set();
      const walk = (name, d, parentRow) => {
        if (visited.has(name)) return;
        visited.add(name);
        const row = { name, d, parentRow, node: byName.get(name) };
        rows.push(row);
        if (collapsed.has(name)) return;
        for (const c of k.get(name) || []) walk(c, d + 1, row);
      };
      walk(data.root, 0, null);
      // Nodes not reachable from the root (lost, stale, joining): listed after it.
      const detached = data.nodes.filter((n) => !visited.has(n.name) && !n.parent);
      const orphans = data.nodes.filter((n) => !visited.has(n.name) && n.parent && !byName.has(n.parent));
      const outside = detached.concat(orphans).map((n) => n.name).filter((x) => !visited.has(x)).sort();
      if (outside.length) {
        rows.push({ label: `not in the tree (${outside.length})`, d: 0 });
        for (const name of outside) walk(name, 1, null);
      }
      const RH = 18, IND = 16;
      let maxX = 0;
      rows.forEach((r, i) => { r.y = i * RH + 12; r.x = 14 + r.d * IND; maxX = Math.max(maxX, r.x + 260); });
      const svg = s('svg', { width: maxX + 40, height: rows.length * RH + 8, id: 'tree-svg' });
      const edges = s('g');
      const nodesG = s('g');
      svg.appendChild(edges);
      svg.appendChild(nodesG);
      for (const r of rows) {
        if (r.label) { nodesG.appendChild(s('text', { x: 4, y: r.y + 4, class: 'hidden-count' }, r.label)); continue; }
        if (r.parentRow) {
          const p = r.parentRow;
          edges.appendChild(s('path', { class: 'edge', d: `M${p.x},${p.y + 5}V${r.y}H${r.x - 6}` }));
        }
        const st = r.node ? r.node.status : 'up';
        const g = s('g', { class: 'toggle', transform: `translate(${r.x},${r.y})` });
        g.setAttribute('data-node', r.name);
        if (r.name === highlight) g.setAttribute('data-hit', '1');
        const nk = (k.get(r.name) || []).length;
        if (nk) g.appendChild(s('text', { x: -13, y: 4 }, collapsed.has(r.name) ? '\u25B8' : '\u25BE'));
        g.appendChild(s('circle', { r: 4.5, class: 'dot-' + st }));
        const label = s('text', { x: 9, y: 4 }, r.name);
        if (r.name === highlight) label.setAttribute('font-weight', 'bold');
        g.appendChild(label);
        const extra = [];
        if (collapsed.has(r.name)) extra.push(`+${size(r.name, new Set())} hidden`);
        if (st !== 'up') extra.push(st);
        if (r.node && r.node.addr) extra.push(r.node.addr);
        if (extra.length) g.appendChild(s('text', { x: 9 + Math.min(200, r.name.length * 6.7 + 8), y: 4, class: 'hidden-count' }, extra.join(' · ')));
        g.addEventListener('click', (ev) => {
          if (ev.detail > 1) return;
          if (!nk) { location.hash = nodeHref(r.name); return; }
          if (collapsed.has(r.name)) collapsed.delete(r.name); else collapsed.add(r.name);
          draw();
        });
        g.addEventListener('dblclick', () => { if (r.name !== data.root) location.hash = nodeHref(r.name); });
        nodesG.appendChild(g);
      }
      replace(box, svg);
    }
    every(2000, async () => {
      const t = await api('/topology');
      const next = JSON.stringify(t);
      const counts = { up: 0, joining: 0, lost: 0, stale: 0, off: 0 };
      let depth = 0;
      for (const n of t.nodes) if (n.name !== t.root) { counts[n.status] = (counts[n.status] || 0) + 1; if (n.status === 'up') depth = Math.max(depth, n.depth); }
      cards.up.set(counts.up, 'ok');
      cards.joining.set(counts.joining, counts.joining ? 'warn' : '');
      cards.lost.set(counts.lost, counts.lost ? 'warn' : '');
      cards.stale.set(counts.stale, counts.stale ? 'bad' : '');
      cards.off.set(counts.off);
      cards.depth.set(depth);
      if (next === sig) return;
      sig = next;
      data = t;
      if (firstDraw && t.nodes.length > 150) collapseBelow(4);
      firstDraw = false;
      draw();
    });
  }

  // ----- The admin token ---------------------------------------------------------------------------

  // Kept in the tab's session only (sessionStorage): gone when the tab closes, never in a cookie.
  function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
  const bearer = () => (token() ? { Authorization: 'Bearer ' + token() } : {});

  // The token prompt the pages share (same element ids on every page: one page at a time).
  // `without` says what happens with no token; onChange(fn) runs fn when it is set or forgotten.
  function tokenBox(without) {
    const input = h('input', { type: 'password', id: 'admin-token', placeholder: 'admin token (<state-dir>/admin-token)', size: 40, autocomplete: 'off' });
    const state = h('span', { class: 'note', id: 'token-state' });
    const keep = h('button', { type: 'button', id: 'token-keep' }, 'Use for this session');
    const forget = h('button', { type: 'button', id: 'token-forget' }, 'Forget');
    const listeners = [];
    const show = () => {
      setText(state, token() ? 'token set (kept in this tab\u2019s session only)' : 'no token: ' + without);
      state.classList.toggle('warn-text', !token());
    };
    const changed = () => { show(); listeners.forEach((f) => f()); };
    keep.addEventListener('click', () => {
      const t = input.value.trim();
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
      input.value = '';
      changed();
    });
    forget.addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); changed(); });
    input.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); keep.click(); } });
    show();
    return { el: h('div', { class: 'toolbar' }, input, keep, forget, state), onChange: (f) => listeners.push(f), focus: () => input.focus() };
  }
  const refusal = (e) => (e instanceof ApiError ? `refused (${e.status} ${e.error}): ${e.detail}` : String(e));

  // ----- Alarms ----------------------------------------------------------------------------------

  async function adminCall(path, body) {
    const headers = Object.assign({ 'Content-Type': 'application/json' }, bearer());
    return api(path, { method: 'POST', headers, body: JSON.stringify(body) });
  }

  function pageAlarms() {
    const tok = tokenBox('adding and deleting will be refused');
    const f = {
      name: h('input', { id: 'alarm-name', required: true }),
      target: h('input', { id: 'alarm-target', value: 'main' }),
      metric: h('input', { id: 'alarm-metric', class: 'mono', placeholder: 'banyan_node_cpu_usage_ratio' }),
      op: h('select', { id: 'alarm-op' }, h('option', { value: '>' }, '>'), h('option', { value: '<' }, '<'), h('option', { value: '=' }, '=')),
      value: h('input', { id: 'alarm-value', type: 'number', step: 'any', value: '0' }),
    };
    const msg = h('div', { id: 'alarm-msg', role: 'status' });
    const say = (text, bad) => { setText(msg, text); msg.className = bad ? 'error' : 'ok-text'; };
    const form = h('form', { class: 'add', id: 'alarm-form' },
      h('label', null, 'Name', f.name), h('label', null, 'Target (job or main)', f.target), h('label', null, 'Metric', f.metric),
      h('label', null, 'Operator', f.op), h('label', null, 'Value', f.value), h('span'),
      h('button', { type: 'submit', id: 'alarm-add' }, 'Add alarm'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { name: f.name.value, target: f.target.value, metric: f.metric.value.trim(), operation: f.op.value, value: Number(f.value.value) };
      try {
        await adminCall('/alarms/add', body);
        say('added ' + JSON.stringify(body.name));
        refresh();
      } catch (e) {
        say(refusal(e), true);
      }
    });
    const del = async (a) => {
      try {
        await adminCall('/alarms/del', { target: a.target, name: a.name });
        say('deleted ' + JSON.stringify(a.name));
        refresh();
      } catch (e) {
        say(refusal(e), true);
      }
    };
    const histText = (a) => (a.history || []).slice(-4).map((c) => (c.raised ? '\u2191 ' : '\u2193 ') + msWhen(c.at) + ' (' + num(c.value) + ')').join('  ');
    const raised = new Table([
      { label: 'Target', name: true, sort: (a) => a.target, text: (a) => a.target },
      { label: 'Alarm', name: true, sort: (a) => a.name, text: (a) => a.name },
      { label: 'Condition', name: true, text: (a) => a.metric + ' ' + opText(a.operator) },
      { label: 'Value', num: true, text: (a) => num(a.current) },
      { label: 'Raised at', sort: (a) => a.raised_at, text: (a) => msWhen(a.raised_at) },
      { label: 'History', text: histText },
    ], (a) => a.target + '\u0000' + a.name, { id: 'alarms-raised', sortCol: 4, sortDesc: true, empty: 'no alarm raised' });
    const all = new Table([
      { label: 'Target', name: true, sort: (a) => a.target, text: (a) => a.target },
      { label: 'Alarm', name: true, sort: (a) => a.name, text: (a) => a.name },
      { label: 'Condition', name: true, text: (a) => a.metric + ' ' + opText(a.operator) },
      { label: 'Value', num: true, text: (a) => num(a.current) },
      { label: 'State', sort: (a) => a.active, text: (a) => (a.active ? 'raised' : 'clear'), pill: (a) => (a.active ? 'raised' : 'clear') },
      { label: 'Raised / cleared', text: (a) => msWhen(a.raised_at) + ' / ' + msWhen(a.cleared_at) },
      { label: 'History', text: histText },
      {
        label: '', cell: (td, a) => {
          if (td.firstChild) { td.firstChild._alarm = a; return; }
          const b = h('button', { type: 'button', class: 'danger del' }, 'Delete');
          b._alarm = a;
          b.addEventListener('click', () => del(b._alarm));
          td.appendChild(b);
        },
      },
    ], (a) => a.target + '\u0000' + a.name, { id: 'alarms-all', sortCol: 1, empty: 'no alarm defined' });
    replace(view, h('h1', null, 'Alarms'),
      panel('Admin token', tok.el), h('p'),
      panel('Add an alarm', form, msg), h('p'),
      panel('Raised', raised.el), h('p'),
      panel('All alarms', all.el));
    const refresh = async () => {
      const [r, l] = await Promise.all([api('/alarms'), api('/alarms/list')]);
      raised.update(alarmRows(r));
      all.update(alarmRows(l));
    };
    every(2000, refresh);
  }

  // ----- Actions -----------------------------------------------------------------------------------

  const actionHref = (id) => '#/action/' + enc(id);
  // Tasks never change, and `GET /actions` leaves them out: fetched once per action, for the list.
  const taskCache = new Map();
  // The phases of a target, in the order the pages show them; `pending` is what is left.
  const PHASES = ['ok', 'failed', 'cancelled', 'unreachable'];
  const phasePill = (p) => ({ ok: 'ok', failed: 'bad', cancelled: 'cancelled', unreachable: 'lost', pending: 'running' }[p] || 'bad');
  const actionPill = (st) => ({ running: 'running', done: 'finished', cancelled: 'cancelled', interrupted: 'bad' }[st] || 'bad');
  const modeText = (real) => (real ? 'for real' : 'dry run');
  const modePill = (real) => (real ? 'real' : 'dry');
  const ago = (ms) => (ms ? dur(Math.max(0, Date.now() - ms)) + ' ago' : '–');

  // An argument as a shell would need it written, so that the line reads unambiguously.
  const shellWord = (a) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : "'" + a.replace(/'/g, "'\\''") + "'");
  // What an action does, in one line: the command line, or `service OP UNITS`.
  function taskText(task) {
    if (!task) return '…';
    if (task.exec) {
      const e = task.exec;
      const argv = e.argv || [];
      const line = e.shell ? 'sh -c ' + shellWord(argv.join(' ')) : argv.map(shellWord).join(' ');
      return line + (e.user ? '  (as ' + e.user + ')' : '');
    }
    if (task.service) return ['service', task.service.op].concat(task.service.units || []).join(' ');
    if (task.power) {
      const p = task.power;
      return ['power', p.op, p.force ? '--force' : '', p.boot ? '--boot ' + p.boot : ''].filter((w) => w).join(' ');
    }
    if (task.cancel) return 'cancel ' + task.cancel.id;
    if (task.hv) {
      const v = task.hv;
      const ms = v.vm_timeout_ms;
      return ['hv', v.op, v.nvms ? '--nvms' : '', ms ? '--vm-timeout ' + (ms % 1000 ? ms + 'ms' : ms / 1000 + 's') : '',
        v.force_shutoff ? '--force-shutoff' : '', v.cleanup_errors ? '--cleanup-errors' : '',
        v.boot ? '--flavor ' + shellWord(String(v.boot.flavor)) + ' --image ' + shellWord(String(v.boot.image)) : ''].filter((w) => w).join(' ');
    }
    return Object.keys(task)[0] || '?';
  }

  // A bar of ok / failed / cancelled / unreachable out of all targets; the rest is pending.
  class StackBar {
    constructor(attrs) {
      this.parts = Object.fromEntries(PHASES.map((p) => [p, h('span', { class: 's-' + p })]));
      this.el = h('div', Object.assign({ class: 'stack', role: 'img' }, attrs || {}), Object.values(this.parts));
    }
    update(counts, total) {
      const words = [];
      for (const p of PHASES) {
        const n = counts[p] || 0;
        this.parts[p].style.width = (total ? (100 * n) / total : 0).toFixed(2) + '%';
        if (n) words.push(n + ' ' + p);
      }
      if (counts.pending) words.push(counts.pending + ' pending');
      const label = words.join(' · ') || 'no target';
      if (this.el.title !== label) { this.el.title = label; this.el.setAttribute('aria-label', label); }
    }
  }

  // A count cell: coloured when not zero, so that failures stand out in a long list.
  function countCol(label, key, tone) {
    return {
      label, num: true, sort: (a) => a[key],
      cell: (td, a) => {
        setText(td, a[key]);
        const cls = 'num ' + (a[key] ? tone : 'zero');
        if (td.className !== cls) td.className = cls;
      },
    };
  }

  function pageActions() {
    const filter = h('input', { class: 'mono', id: 'actions-filter', size: 30, placeholder: 'filter: who, command, nodes, state', spellcheck: 'false' });
    const count = h('span', { class: 'muted', id: 'actions-count' });
    const table = new Table([
      {
        label: 'Age', sort: (a) => a.started_ms,
        cell: (td, a) => { setText(td, ago(a.started_ms)); td.title = 'started ' + msWhen(a.started_ms); },
      },
      { label: 'Who', sort: (a) => a.who, text: (a) => a.who },
      { label: 'Kind', sort: (a) => a.kind, text: (a) => a.kind },
      { label: 'What', name: true, sort: (a) => taskText(taskCache.get(a.id)), text: (a) => taskText(taskCache.get(a.id)), href: (a) => actionHref(a.id) },
      { label: 'Targets', name: true, sort: (a) => a.nodes, text: (a) => a.nodes },
      { label: 'Nodes', num: true, sort: (a) => a.count, text: (a) => a.count },
      { label: 'Mode', sort: (a) => a.for_real, text: (a) => modeText(a.for_real), pill: (a) => modePill(a.for_real) },
      { label: 'State', sort: (a) => a.state, text: (a) => a.state, pill: (a) => actionPill(a.state) },
      {
        label: 'Progress', cell: (td, a) => {
          if (!td._bar) { td._bar = new StackBar(); replace(td, td._bar.el); td.className = 'stackcell'; }
          td._bar.update({ ok: a.ok, failed: a.failed, unreachable: a.unreachable, pending: a.pending }, a.count);
        },
      },
      countCol('OK', 'ok', 'n-ok'),
      countCol('Failed', 'failed', 'n-bad'),
      countCol('Unreach.', 'unreachable', 'n-lost'),
      countCol('Pending', 'pending', 'n-pending'),
    ], (a) => a.id, { id: 'actions-table', sortCol: 0, sortDesc: true, empty: 'no action yet (banyan exec, service, power)' });
    table.el.classList.add('clickable');
    // A click anywhere on a row opens the action; the link in "What" is there for the keyboard.
    table.body.addEventListener('click', (ev) => {
      if (ev.target.closest('a')) return;
      const tr = ev.target.closest('tr[data-key]');
      if (tr) location.hash = actionHref(tr.getAttribute('data-key'));
    });
    replace(view,
      h('h1', null, 'Actions', h('span', { class: 'sub' }, 'commands and service operations sent through the tree, newest first')),
      h('div', { class: 'toolbar' }, filter, count),
      panel('Recent actions', table.el));
    let last = [];
    const show = () => {
      const f = filter.value.trim().toLowerCase();
      const rows = f ? last.filter((a) => [a.who, a.kind, a.nodes, a.state, a.id, modeText(a.for_real), taskText(taskCache.get(a.id))]
        .some((x) => String(x).toLowerCase().includes(f))) : last;
      table.update(rows);
      const running = last.filter((a) => a.state === 'running').length;
      setText(count, `${rows.length} action${rows.length === 1 ? '' : 's'}${f ? ' shown' : ''} · ${running} running`);
    };
    filter.addEventListener('input', show);
    const mine = gen;
    every(2000, async () => {
      last = await api('/actions');
      show();
      // The tasks of the actions not seen yet, a few requests at a time.
      const missing = last.filter((a) => !taskCache.has(a.id)).map((a) => a.id);
      for (let i = 0; i < missing.length && mine === gen; i += 6) {
        await Promise.all(missing.slice(i, i + 6).map((id) => api('/actions/' + enc(id))
          .then((r) => taskCache.set(id, r.task))
          .catch((e) => { if (e instanceof ApiError && e.status === 404) taskCache.set(id, null); })));
      }
      if (missing.length && mine === gen) show();
    });
  }

  // Targets that answered the same thing, with the same output: one group, as `clush -b` shows.
  function resultGroups(rec) {
    const groups = new Map();
    for (const [node, t] of Object.entries(rec.targets || {})) {
      const r = t.result;
      if (!r) continue;
      const units = (r.units || []).map((u) => [u.unit, u.state, u.detail]);
      const key = JSON.stringify([t.state, r.summary, r.exit, r.signal, r.stdout, r.stderr, r.truncated, units]);
      if (!groups.has(key)) groups.set(key, { key, state: t.state, result: r, nodes: [] });
      groups.get(key).nodes.push(node);
    }
    return Array.from(groups.values());
  }

  // Targets without success, grouped by state and reason.
  function problemGroups(rec) {
    const groups = new Map();
    for (const [node, t] of Object.entries(rec.targets || {})) {
      if (t.state === 'ok' || t.state === 'pending') continue;
      const reason = t.error || (t.result && t.result.summary) || t.state;
      const key = t.state + '\u0000' + reason;
      if (!groups.has(key)) groups.set(key, { key, state: t.state, reason, nodes: [] });
      groups.get(key).nodes.push(node);
    }
    return Array.from(groups.values());
  }

  const bySizeThenName = (a, b) => b.nodes.length - a.nodes.length || naturalCmp(a.folded, b.folded);

  // One group of identical results: the folded node set, its count and outcome, then the output.
  function outputGroup(g) {
    const r = g.result;
    const nodes = h('span', { class: 'nodes' });
    const n = h('span', { class: 'muted' });
    const body = [];
    if (r.stdout) body.push(h('pre', { class: 'out' }, r.stdout));
    if (r.stderr) body.push(h('pre', { class: 'out err', title: 'stderr' }, r.stderr));
    if (r.units && r.units.length) {
      body.push(h('table', { class: 'units' }, h('tbody', null, r.units.map((u) =>
        h('tr', null, h('td', { class: 'mono' }, u.unit), h('td', null, h('span', { class: 'pill ' + (u.state === 'active' ? 'ok' : u.state === 'failed' ? 'bad' : 'clear') }, u.state)), h('td', { class: 'muted' }, u.detail))))));
    }
    if (!body.length) body.push(h('div', { class: 'out none' }, 'no output'));
    if (r.truncated) body.push(h('div', { class: 'note out-note' }, 'output truncated at the cap'));
    const el = h('section', { class: 'out-group ' + g.state },
      h('div', { class: 'out-head' }, nodes, n,
        h('span', { class: 'pill ' + phasePill(g.state) }, g.state),
        h('span', { class: 'summary' }, r.summary || ''),
        r.duration_ms ? h('span', { class: 'muted dur' }, dur(r.duration_ms)) : null),
      body);
    return { el, nodes, n };
  }
  function pageAction(id) {
    const statePills = h('span', { class: 'sub', id: 'act-state' });
    const err = errorBox('act-error');
    const kv = h('div', { class: 'kv', id: 'act-kv' });
    const c = {
      ok: card('OK', 'act-ok'), failed: card('Failed', 'act-failed'), cancelled: card('Cancelled', 'act-cancelled'),
      unreachable: card('Unreachable', 'act-unreachable'), pending: card('Pending', 'act-pending'),
    };
    const bar = new StackBar({ id: 'act-bar', class: 'stack big' });
    const answered = h('div', { class: 'note', id: 'act-answered' });
    const cancelBtn = h('button', { type: 'button', class: 'danger', id: 'act-cancel' }, 'Cancel action');
    const cancelMsg = h('span', { id: 'act-cancel-msg', role: 'status' });
    const tok = tokenBox('needed to cancel');
    // The token prompt only when one is missing or was refused.
    tok.el.hidden = !!token();
    tok.onChange(() => { setText(cancelMsg, ''); tok.el.hidden = !!token(); });
    const cancelBox = h('div', { id: 'act-cancel-box', class: 'cancel-box', hidden: true }, h('div', { class: 'toolbar' }, cancelBtn, cancelMsg), tok.el);
    const problems = new Table([
      { label: 'State', sort: (g) => g.state, text: (g) => g.state, pill: (g) => phasePill(g.state) },
      { label: 'Nodes', num: true, sort: (g) => g.nodes.length, text: (g) => g.nodes.length },
      { label: 'Node set', name: true, sort: (g) => g.folded, text: (g) => g.folded },
      { label: 'Reason', name: true, sort: (g) => g.reason, text: (g) => g.reason },
    ], (g) => g.key, { id: 'act-problems', sortCol: 1, sortDesc: true, wrap: true, empty: 'none' });
    const problemsPanel = panel('Failures and unreachable nodes', problems.el);
    problemsPanel.hidden = true;
    const outputs = h('div', { id: 'act-output' });
    const outNote = h('p', { class: 'muted', id: 'act-output-note' }, 'no result yet');
    replace(view,
      h('h1', null, 'Action ', h('span', { class: 'mono', id: 'act-id' }, id), statePills),
      err.el,
      h('div', { class: 'grid' },
        panel('Action', kv),
        panel('Progress', h('div', { class: 'cards' }, Object.values(c).map((x) => x.el)), bar.el, answered, cancelBox)),
      problemsPanel, h('p'),
      panel('Output, nodes with identical results grouped (as clush -b)', outNote, outputs));

    let rec = null;
    const shown = new Map();
    const say = (text, bad) => { setText(cancelMsg, text); cancelMsg.className = bad ? 'error' : 'ok-text'; };
    // Two clicks: a cancel at 3 a.m. should be meant.
    let armed = null;
    cancelBtn.addEventListener('click', async () => {
      if (!token()) { say('paste the admin token below first', true); tok.el.hidden = false; tok.focus(); return; }
      if (!armed) {
        setText(cancelBtn, 'Click again to cancel');
        armed = setTimeout(() => { armed = null; setText(cancelBtn, 'Cancel action'); }, 5000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      cancelBtn.disabled = true;
      setText(cancelBtn, 'Cancelling…');
      try {
        const r = await api('/actions/' + enc(id), { method: 'DELETE', headers: bearer() });
        say(r.state === 'cancelling' ? 'cancel sent to the nodes still running it' : 'the action was already ' + r.state);
      } catch (e) {
        say(refusal(e), true);
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) tok.el.hidden = false;
        cancelBtn.disabled = false;
        setText(cancelBtn, 'Cancel action');
      }
    });

    function showTimes() {
      if (!rec) return;
      const rows = [
        ['what', taskText(rec.task)], ['kind', rec.kind], ['mode', modeText(rec.for_real)],
        ['who', rec.who + (rec.peer && rec.peer !== '-' ? ' from ' + rec.peer : '')],
        ['targets', rec.nodes + ' (' + Object.keys(rec.targets || {}).length + ')'],
        ['started', msWhen(rec.started_ms) + ' (' + ago(rec.started_ms) + ')'],
      ];
      if (rec.state === 'running') {
        rows.push(['running for', dur(Date.now() - rec.started_ms)], ['gives up at', msWhen(rec.deadline_ms)]);
      } else {
        rows.push(['ended', msWhen(rec.ended_ms) + (rec.ended_ms ? ' (took ' + dur(rec.ended_ms - rec.started_ms) + ')' : '')]);
      }
      if (rec.cancel_requested) rows.push(['cancel', 'requested']);
      fillKv(kv, rows);
    }

    function render() {
      taskCache.set(rec.id, rec.task);
      replace(statePills,
        h('span', { class: 'pill ' + actionPill(rec.state) }, rec.state), ' ',
        h('span', { class: 'pill ' + modePill(rec.for_real) }, modeText(rec.for_real)));
      showTimes();
      const targets = Object.entries(rec.targets || {});
      const counts = { ok: 0, failed: 0, cancelled: 0, unreachable: 0, pending: 0 };
      const pending = [];
      for (const [node, t] of targets) {
        counts[t.state] = (counts[t.state] || 0) + 1;
        if (t.state === 'pending') pending.push(node);
      }
      c.ok.set(counts.ok, counts.ok ? 'ok' : '');
      c.failed.set(counts.failed, counts.failed ? 'bad' : '');
      c.cancelled.set(counts.cancelled, counts.cancelled ? 'warn' : '');
      c.unreachable.set(counts.unreachable, counts.unreachable ? 'bad' : '');
      c.pending.set(counts.pending, counts.pending && rec.state === 'running' ? 'warn' : '');
      bar.update(counts, targets.length);
      const done = targets.length - pending.length;
      setText(answered, `${done} of ${targets.length} answered` +
        (pending.length ? ` · waiting for ${foldNodes(pending)}` : ''));
      const running = rec.state === 'running';
      cancelBox.hidden = !running;
      if (running && rec.cancel_requested) { cancelBtn.disabled = true; setText(cancelBtn, 'Cancel requested'); }

      const probs = problemGroups(rec);
      for (const g of probs) g.folded = foldNodes(g.nodes);
      problems.update(probs);
      problemsPanel.hidden = probs.length === 0;

      // Output groups, keyed by their result: a group's text never changes, only its nodes.
      const groups = resultGroups(rec);
      for (const g of groups) g.folded = foldNodes(g.nodes);
      groups.sort(bySizeThenName);
      const seen = new Set();
      groups.forEach((g, i) => {
        seen.add(g.key);
        let e = shown.get(g.key);
        if (!e) { e = outputGroup(g); shown.set(g.key, e); }
        setText(e.nodes, g.folded);
        setText(e.n, '(' + g.nodes.length + ')');
        e.el.setAttribute('data-nodes', g.folded);
        if (outputs.children[i] !== e.el) outputs.insertBefore(e.el, outputs.children[i] || null);
      });
      for (const [k, e] of shown) if (!seen.has(k)) { e.el.remove(); shown.delete(k); }
      outNote.hidden = groups.length > 0;
    }

    // Follows the action by long polling: each answer comes as soon as the action changes.
    const mine = gen;
    let ctl = null;
    onLeave(() => { if (ctl) ctl.abort(); });
    (async () => {
      let since = null;
      while (mine === gen) {
        ctl = new AbortController();
        try {
          const q = since === null ? '' : `?wait_ms=25000&since=${since}`;
          const r = await api('/actions/' + enc(id) + q, { signal: ctl.signal });
          if (mine !== gen) return;
          connOk();
          err.show(null);
          if (!rec || r.version !== rec.version || r.state !== rec.state) { rec = r; render(); }
          markRendered(mine);
          since = r.version;
          if (r.state !== 'running') return;
          // Answers from many nodes come in bursts: one redraw per short while, not per answer.
          await sleep(400);
        } catch (e) {
          if (mine !== gen) return;
          err.show(e);
          if (e instanceof ApiError && (e.status === 400 || e.status === 404)) return;
          connBad(e);
          await sleep(2000);
        }
      }
    })();
    // The clock of a running action moves between answers.
    const tick = () => {
      if (mine !== gen) return;
      if (rec && rec.state === 'running') showTimes();
      setTimeout(tick, 1000);
    };
    setTimeout(tick, 1000);
  }

  // ----- Power -------------------------------------------------------------------------------------

  // Power goes through the action path like any action (POST /actions with a `power` task, the
  // token's scope, the audit log), carried out by the root against the BMCs of its root.toml.
  // `status` only reads, and runs without for_real; on, off and reset run as a dry run first, whose
  // preview the operator confirms by the node set and its size before the real action is sent.
  const POWER_VERBS = { on: 'Power on', off: 'Power off', reset: 'Reset' };
  // The root's words for a node outside every [[bmc]] section (root/src/power.rs).
  const NO_BMC = /^no BMC configured/;
  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
  function powerTask(op, force) {
    const p = { op };
    if (force && (op === 'off' || op === 'reset')) p.force = true;
    return { power: p };
  }
  const startAction = (nodes, task, forReal) => adminCall('/actions', { nodes, for_real: forReal, task });
  const powerPill = (p) => ({ On: 'up', Off: 'clear', 'no BMC': 'stale', error: 'bad' }[p] || 'joining');

  // Follows an action by long polls, calling onChange(record) whenever it changed, until it ends
  // (its last record) or the page changes or alive() turns false (null).
  async function followAction(id, onChange, alive) {
    const mine = gen;
    const live = () => mine === gen && (!alive || alive());
    let ctl = null;
    onLeave(() => { if (ctl) ctl.abort(); });
    let since = null, seen = null;
    while (live()) {
      ctl = new AbortController();
      try {
        const q = since === null ? '' : `?wait_ms=25000&since=${since}`;
        const r = await api('/actions/' + enc(id) + q, { signal: ctl.signal });
        if (!live()) return null;
        connOk();
        if (r.version + r.state !== seen) { seen = r.version + r.state; onChange(r); }
        since = r.version;
        if (r.state !== 'running') return r;
        // Answers from many BMCs come in bursts: one redraw per short while.
        await sleep(250);
      } catch (e) {
        if (!live()) return null;
        if (e instanceof ApiError && (e.status === 400 || e.status === 404)) throw e;
        connBad(e);
        await sleep(2000);
      }
    }
    return null;
  }

  // Each target of an action: {node, state, text}, the text being its result's summary.
  function targetRows(rec) {
    return Object.entries(rec.targets || {}).map(([node, t]) => ({
      node, state: t.state,
      text: (t.result && t.result.summary) || t.error || (t.state === 'pending' ? 'waiting for the BMC…' : t.state),
    }));
  }
  function tally(rec) {
    const counts = { ok: 0, failed: 0, cancelled: 0, unreachable: 0, pending: 0 };
    for (const t of Object.values(rec.targets || {})) counts[t.state] = (counts[t.state] || 0) + 1;
    return counts;
  }

  // What a power result says of its node: {power, note}, or null while it is pending. The state
  // comes from the result's line `BMC Off, agent up`; the note is what the summary adds to it.
  function powerOf(t) {
    if (!t || t.state === 'pending') return null;
    const r = t.result;
    const summary = (r && r.summary) || t.error || t.state;
    if (t.state !== 'ok') return { power: NO_BMC.test(summary) ? 'no BMC' : 'error', note: summary, noBmc: NO_BMC.test(summary) };
    const m = /^BMC (.+), agent (\S+)$/.exec(((r && r.stdout) || '').trim());
    if (!m) return { power: '?', note: summary };
    let note = summary;
    if (summary.startsWith(m[0])) note = summary.slice(m[0].length).trim().replace(/^\((.*)\)$/, '$1');
    return { power: m[1], note };
  }

  // The on / off / reset buttons: a dry run and its preview, a confirmation naming the node set
  // and its size, then the real action followed live. o.target() is the node set to act on (or
  // null); o.onResult(record, op) sees every change of a real action, o.onDone(record) its end.
  function powerMenu(o) {
    const btns = Object.fromEntries(Object.entries(POWER_VERBS).map(([op, label]) =>
      [op, h('button', { type: 'button', id: 'power-' + op, class: op === 'on' ? null : 'danger' }, label + '…')]));
    const force = h('input', { type: 'checkbox', id: 'power-force' });
    const msg = h('div', { id: 'power-msg', role: 'status' });
    const say = (text, bad) => { setText(msg, text); msg.className = bad ? 'error' : 'note'; };
    const stepCols = (third) => [
      { label: 'Node', name: true, sort: (t) => t.node, text: (t) => t.node, href: (t) => nodeHref(t.node) },
      { label: 'State', sort: (t) => t.state, text: (t) => t.state, pill: (t) => phasePill(t.state) },
      { label: third, name: true, text: (t) => t.text },
    ];
    const previewTitle = h('h2', { id: 'power-preview-title' });
    const preview = new Table(stepCols('What would be done'), (t) => t.node, { id: 'power-preview-table', sortCol: 0, wrap: true, empty: 'waiting for the dry run…' });
    const warn = h('p', { class: 'warn-text', id: 'power-preview-warn', hidden: true });
    const confirm = h('button', { type: 'button', class: 'danger confirm', id: 'power-confirm', hidden: true });
    const back = h('button', { type: 'button', id: 'power-back' }, 'Do nothing');
    const previewBox = h('div', { id: 'power-preview', class: 'power-step', hidden: true },
      previewTitle, h('p', { class: 'note' }, 'Dry run: no BMC was called and nothing changed.'), preview.el, warn,
      h('div', { class: 'toolbar' }, confirm, back));
    const progressTitle = h('h2', { id: 'power-progress-title' });
    const progressState = h('span', { id: 'power-progress-state' });
    const answered = h('span', { class: 'note', id: 'power-progress-count' });
    const link = h('a', { id: 'power-action-link' }, 'action page');
    const bar = new StackBar({ class: 'stack big' });
    const progress = new Table(stepCols('Result'), (t) => t.node, { id: 'power-progress-table', sortCol: 0, wrap: true, empty: 'no target' });
    const progressBox = h('div', { id: 'power-progress', class: 'power-step', hidden: true },
      progressTitle, h('div', { class: 'toolbar' }, progressState, answered, link), bar.el, progress.el);

    // A newer request makes the answers of an older one moot.
    let seq = 0;
    let planned = null;
    let running = false;
    const setBusy = (b) => { for (const x of Object.values(btns)) x.disabled = b; };
    const needToken = () => { if (o.needToken) o.needToken(); };

    async function dryRun(op) {
      const nodes = o.target();
      const verb = POWER_VERBS[op];
      if (!nodes) { say('no node to act on', true); return; }
      if (!token()) { say('paste a token first: every power request needs one', true); needToken(); return; }
      const my = ++seq;
      const task = powerTask(op, force.checked);
      planned = null;
      confirm.hidden = true;
      warn.hidden = true;
      progressBox.hidden = true;
      setBusy(true);
      say(`dry run: asking the root what ${verb.toLowerCase()} would do…`);
      try {
        const a = await startAction(nodes, task, false);
        if (my !== seq) return;
        setText(previewTitle, `${verb}${task.power.force ? ' (forced)' : ''}: ${a.targets} (${plural(a.count, 'node')})`);
        preview.update([]);
        previewBox.hidden = false;
        const rec = await followAction(a.id, (r) => { if (my === seq) preview.update(targetRows(r)); }, () => my === seq);
        if (!rec || my !== seq) return;
        const rows = targetRows(rec);
        const bad = rows.filter((t) => t.state !== 'ok');
        if (bad.length === rows.length) {
          say(`${verb} cannot be done on ${plural(rows.length, 'node')}: the reasons are above`, true);
          return;
        }
        warn.hidden = bad.length === 0;
        setText(warn, bad.length ? `${foldNodes(bad.map((t) => t.node))} would fail (${bad.length} of ${rows.length}): the reasons are above` : '');
        planned = { op, task, targets: a.targets, count: a.count };
        setText(confirm, `${verb} ${a.targets} (${plural(a.count, 'node')})`);
        confirm.hidden = false;
        say('dry run done; confirm to do it for real');
      } catch (e) {
        if (my !== seq) return;
        say(refusal(e), true);
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) needToken();
      } finally {
        if (my === seq && !running) setBusy(false);
      }
    }

    function showProgress(rec) {
      const counts = tally(rec);
      const total = Object.keys(rec.targets || {}).length;
      replace(progressState, h('span', { class: 'pill ' + actionPill(rec.state) }, rec.state), ' ',
        h('span', { class: 'pill ' + modePill(rec.for_real) }, modeText(rec.for_real)));
      setText(answered, `${total - counts.pending} of ${total} answered` +
        (counts.failed ? ` · ${counts.failed} failed` : '') + (counts.pending ? ` · waiting for ${counts.pending}` : ''));
      bar.update(counts, total);
      progress.update(targetRows(rec));
    }

    confirm.addEventListener('click', async () => {
      if (!planned || running) return;
      const p = planned;
      const verb = POWER_VERBS[p.op];
      const my = ++seq;
      planned = null;
      running = true;
      confirm.hidden = true;
      previewBox.hidden = true;
      setBusy(true);
      say(`${verb} ${p.targets}: sending it for real…`);
      // Clear what the previous action left in the progress box before anything is sent.
      replace(progressState, h('span', { class: 'pill' }, 'sending'));
      progress.update([]);
      try {
        const a = await startAction(p.targets, p.task, true);
        setText(progressTitle, `${verb}${p.task.power.force ? ' (forced)' : ''}: ${a.targets} (${plural(a.count, 'node')})`);
        link.setAttribute('href', actionHref(a.id));
        progress.update([]);
        progressBox.hidden = false;
        say(`${verb} ${a.targets}: running`);
        const rec = await followAction(a.id, (r) => { showProgress(r); if (o.onResult) o.onResult(r, p.op); });
        if (!rec) return;
        const c = tally(rec);
        const failed = c.failed + c.unreachable + c.cancelled;
        say(`${verb} ${a.targets}: ${rec.state}, ${c.ok} ok` + (failed ? `, ${failed} not` : ''), failed > 0);
        if (o.onDone) o.onDone(rec);
      } catch (e) {
        say(refusal(e), true);
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) needToken();
      } finally {
        running = false;
        if (my === seq) setBusy(false);
      }
    });
    back.addEventListener('click', () => {
      seq++;
      planned = null;
      previewBox.hidden = true;
      if (!running) setBusy(false);
      say('nothing was done');
    });
    for (const [op, b] of Object.entries(btns)) b.addEventListener('click', () => dryRun(op));

    const el = h('div', { class: 'power-menu' },
      h('div', { class: 'toolbar' }, btns.on, btns.off, btns.reset,
        h('label', { class: 'check', title: 'off and reset: no graceful step, the power is cut or reset at once' }, force, ' force (off, reset at once)')),
      msg, previewBox, progressBox);
    return {
      el,
      // The node set changed: a preview of another set must not be confirmed. A real action
      // already sent goes on and stays shown.
      reset() {
        if (running) return;
        seq++;
        planned = null;
        previewBox.hidden = true;
        setBusy(false);
        say('');
      },
    };
  }

  function pagePower() {
    const tok = tokenBox('the BMCs are not asked: every power request needs a token');
    const filter = h('input', { class: 'mono', id: 'power-filter', size: 28, placeholder: 'node set, e.g. cn[1-32] (empty: all)', spellcheck: 'false' });
    const count = h('span', { class: 'muted', id: 'power-count' });
    const again = h('button', { type: 'button', id: 'power-refresh' }, 'Ask the BMCs again');
    const filterErr = errorBox('power-filter-error');
    const asked = h('div', { class: 'note', id: 'power-asked' });
    const askErr = h('div', { class: 'error', id: 'power-error', role: 'alert' });
    const rows = new Map();
    let names = [];
    const table = new Table([
      { label: 'Node', name: true, sort: (r) => r.name, text: (r) => r.name, href: (r) => nodeHref(r.name) },
      { label: 'BMC power', sort: (r) => r.power, text: (r) => r.power, pill: (r) => powerPill(r.power) },
      { label: 'Agent', sort: (r) => r.agent, text: (r) => r.agent, pill: (r) => statusPill(r.agent) },
      { label: 'Note', name: true, text: (r) => r.note },
    ], (r) => r.name, { id: 'power-table', sortCol: 0, wrap: true, empty: 'no node matches' });
    const target = () => (names.length ? foldNodes(names) : null);
    const draw = () => table.update(names.map((n) => rows.get(n)));

    // Results into the table as they come: a status action's, or a real action's (op).
    const apply = (rec, op) => {
      for (const [node, t] of Object.entries(rec.targets || {})) {
        const r = rows.get(node);
        if (!r) continue;
        const p = powerOf(t);
        if (p) { r.power = p.power; r.note = p.note; } else if (op) r.note = POWER_VERBS[op].toLowerCase() + ' in progress…';
      }
      draw();
    };
    let askSeq = 0;
    const ask = async () => {
      const my = ++askSeq;
      const nodes = target();
      setText(askErr, '');
      if (!nodes) { setText(asked, ''); return; }
      if (!token()) { setText(asked, 'no token: the BMCs were not asked'); return; }
      setText(asked, `asking the BMCs of ${nodes}…`);
      try {
        const a = await startAction(nodes, { power: { op: 'status' } }, false);
        if (my !== askSeq) return;
        const rec = await followAction(a.id, (r) => { if (my === askSeq) apply(r, null); }, () => my === askSeq);
        if (!rec || my !== askSeq) return;
        const c = tally(rec);
        setText(asked, `BMC states as of ${new Date().toLocaleTimeString()}: ${c.ok} of ${plural(Object.keys(rec.targets).length, 'node')} answered` +
          (c.failed ? ` · ${c.failed} failed` : ''));
        asked.setAttribute('data-action', rec.id);
      } catch (e) {
        if (my !== askSeq) return;
        setText(asked, '');
        setText(askErr, refusal(e));
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) tok.focus();
      }
    };
    const menu = powerMenu({ target, onResult: apply, onDone: () => ask(), needToken: () => tok.focus() });

    const saved = sessionStorage.getItem('banyan.powerFilter') || '';
    filter.value = saved;
    let expr = saved.trim();
    replace(view,
      h('h1', null, 'Power', h('span', { class: 'sub' }, 'each node\u2019s BMC beside its agent in the tree; every change is a dry run first')),
      panel('Token', tok.el), h('p'),
      h('div', { class: 'toolbar' }, filter, count, again, filterErr.el),
      h('div', { class: 'grid' },
        panel('Power state', asked, askErr, table.el),
        panel('Change the power of these nodes', menu.el)));

    const refresh = async () => {
      const want = expr;
      let nodes;
      try {
        nodes = await api('/nodes' + (want ? '?nodes=' + enc(want) : ''));
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 400)) throw e;
        if (want !== expr) return;
        filterErr.show(e);
        names = [];
        menu.reset();
        draw();
        setText(count, '');
        return;
      }
      if (want !== expr) return;
      filterErr.show(null);
      const before = names.join('\u0000');
      names = nodes.map((n) => n.name).sort(naturalCmp);
      for (const n of nodes) {
        const r = rows.get(n.name) || { name: n.name, power: '–', note: '' };
        r.agent = n.status;
        rows.set(n.name, r);
      }
      draw();
      setText(count, `${plural(nodes.length, 'node')} · ${nodes.filter((n) => n.status === 'up').length} up`);
      // A new set of nodes: its BMCs are asked once (each ask is an audited action, not a poll).
      if (names.join('\u0000') !== before) { menu.reset(); ask(); }
    };
    let timer = null;
    filter.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        expr = filter.value.trim();
        sessionStorage.setItem('banyan.powerFilter', expr);
        refresh().catch(connBad);
      }, 250);
    });
    again.addEventListener('click', ask);
    tok.onChange(ask);
    every(POLL_MS, refresh);
  }

  // The node page's power panel: the node's BMC state, asked once when the page opens, and the
  // same menu as the Power page for this one node.
  function nodePower(name) {
    const state = h('span', { id: 'node-power' });
    const note = h('span', { class: 'note', id: 'node-power-note' });
    const tok = tokenBox('this node\u2019s BMC is not asked: power requests need a token');
    tok.el.hidden = !!token();
    const show = (power, text) => {
      replace(state, h('span', { class: 'pill ' + powerPill(power) }, power === 'no BMC' ? 'no BMC configured' : power));
      setText(note, text || '');
    };
    let askSeq = 0;
    const ask = async () => {
      const my = ++askSeq;
      if (!token()) { tok.el.hidden = false; show('–', 'no token'); return; }
      tok.el.hidden = true;
      show('…', 'asking the BMC');
      try {
        const a = await startAction(name, { power: { op: 'status' } }, false);
        const rec = await followAction(a.id, () => {}, () => my === askSeq);
        if (!rec || my !== askSeq) return;
        const p = powerOf(rec.targets[name]) || { power: '?', note: rec.state };
        show(p.power, p.note);
        menu.el.hidden = !!p.noBmc;
      } catch (e) {
        if (my !== askSeq) return;
        show('error', refusal(e));
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) tok.el.hidden = false;
      }
    };
    const menu = powerMenu({
      target: () => name,
      onResult: (rec, op) => {
        const p = powerOf((rec.targets || {})[name]);
        if (p) show(p.power, p.note); else setText(note, POWER_VERBS[op].toLowerCase() + ' in progress…');
      },
      onDone: () => ask(),
      needToken: () => { tok.el.hidden = false; tok.focus(); },
    });
    menu.el.hidden = true;
    tok.onChange(ask);
    ask();
    return panel('Power', h('div', { class: 'toolbar' }, h('span', { class: 'muted' }, 'BMC power'), state, note), tok.el, menu.el);
  }

  // ----- Cloud -------------------------------------------------------------------------------------

  // OpenStack hypervisors go through the action path like any action (POST /actions with a `hv`
  // task, the token's scope, the audit log), carried out by the root against the cloud of its
  // root.toml ([openstack]). `status` only reads and is sent for real; enable and disable run as
  // a dry run first (Nova is read, nothing is changed, nothing started or stopped), whose preview
  // the operator confirms by the node set and its size before the real action is sent; the real
  // one is then followed live, node by node (the root's progress lines, then each result).
  const HV_VERBS = { enable: 'Enable', disable: 'Disable' };
  // How often the status is asked again while the page is shown: each ask is an audited action
  // (and reaches every node's agent), so no faster, and never while the tab is hidden.
  const CLOUD_REFRESH_MS = 15000;
  const CLOUD_FILTER_KEY = 'banyan.cloudFilter';
  const yesNo = (v) => (v === true ? 'yes' : v === false ? 'no' : '–');
  const hvStatusTask = () => ({ hv: { op: 'status', nvms: true } });
  const daemonsPill = (d) => ({ running: 'up', stopped: 'clear', failed: 'bad' }[d] || 'joining');
  const novaPill = (st) => ({ up: 'up', down: 'bad' }[st] || 'clear');

  // What a status action says of one target: {ok, row, reason}, or null while it is pending.
  // `row` is the JSON line of its result's stdout (there for hosts Nova does not know too);
  // `reason` is why the target failed (its summary).
  function hvStatusOf(t) {
    if (!t || t.state === 'pending') return null;
    const r = t.result;
    let row = null;
    if (r && r.stdout) {
      try { row = JSON.parse(r.stdout.trim().split('\n')[0]); } catch (_) { row = null; }
      if (!row || typeof row !== 'object' || Array.isArray(row)) row = null;
    }
    const ok = t.state === 'ok' && !!row;
    return { ok, row, reason: ok ? '' : (r && r.summary) || t.error || t.state };
  }
  const vmText = (v) => String(v.name || v.id || '?') + ' ' + String(v.status || '?');

  // A cell holding one pill (or a dash) and an optional muted note under it; redrawn only when
  // its text changes.
  function pillCell(td, text, cls, note) {
    const sig = [text, cls, note || ''].join('\u0000');
    if (td._sig === sig) return;
    td._sig = sig;
    replace(td, text === null ? h('span', { class: 'muted' }, '–') : h('span', { class: 'pill ' + cls }, text),
      note ? h('div', { class: 'cell-note' }, note) : null);
  }

  // The hv lines of each target of an action (live while it runs, its result's once it ended)
  // and its summary.
  function hvSteps(rec) {
    return Object.entries(rec.targets || {}).map(([node, t]) => {
      const r = t.result;
      const lines = ((r ? r.stdout : t.live && t.live.stdout) || '').replace(/\n+$/, '');
      const summary = r ? r.summary || '' : t.error || (t.state === 'pending' ? '' : t.state);
      return { node, state: t.state, lines, summary };
    });
  }
  function stepsCell(td, t) {
    const sig = [t.state, t.lines, t.summary].join('\u0000');
    if (td._sig === sig) return;
    td._sig = sig;
    const tone = t.state === 'ok' ? 'ok-text' : t.state === 'pending' ? 'muted' : 'n-bad';
    replace(td,
      t.lines ? h('pre', { class: 'steps' }, t.lines) : null,
      t.summary ? h('div', { class: 'step-summary ' + tone }, t.summary)
        : t.state === 'pending' && !t.lines ? h('div', { class: 'muted' }, 'waiting for the root…') : null);
  }
  function hvTaskFor(op, timeoutText, force) {
    const t = { op };
    if (op === 'disable') {
      const v = String(timeoutText).trim();
      if (v !== '') {
        const secs = Number(v);
        if (!Number.isFinite(secs) || secs <= 0) throw new Error('the VM timeout is a number of seconds above 0 (empty: 300 s)');
        t.vm_timeout_ms = Math.max(1, Math.round(secs * 1000));
      }
      if (force) t.force_shutoff = true;
    }
    return { hv: t };
  }
  const hvTaskWords = (hv) => [hv.vm_timeout_ms ? 'VM timeout ' + hv.vm_timeout_ms / 1000 + ' s' : '', hv.force_shutoff ? 'force shutoff' : '']
    .filter((w) => w).join(', ');

  // The enable / disable buttons: a dry run and its preview (each node and what would be done),
  // a confirmation naming the node set and its size, then the real action followed live.
  // o.target() is {nodes, what} (the expression to act on and how to say it) or null;
  // o.onDone(record) runs when a real action ended; o.needToken() when one is missing or refused.
  function hvMenu(o) {
    const btns = {
      enable: h('button', { type: 'button', id: 'cloud-enable' }, 'Enable…'),
      disable: h('button', { type: 'button', id: 'cloud-disable', class: 'danger' }, 'Disable…'),
    };
    const vmTimeout = h('input', { type: 'number', id: 'cloud-vm-timeout', class: 'mono num-input', min: 1, step: 'any', placeholder: '300',
      title: 'disable: how long the servers are given to go, in seconds (empty: 300)' });
    const force = h('input', { type: 'checkbox', id: 'cloud-force-shutoff' });
    const targetLine = h('div', { class: 'note', id: 'cloud-target' });
    const msg = h('div', { id: 'cloud-msg', role: 'status' });
    const say = (text, bad) => { setText(msg, text); msg.className = bad ? 'error' : 'note'; };
    const stepCols = (third) => [
      { label: 'Node', name: true, sort: (t) => t.node, text: (t) => t.node, href: (t) => nodeHref(t.node) },
      { label: 'State', sort: (t) => t.state, text: (t) => t.state, pill: (t) => phasePill(t.state) },
      { label: third, cell: stepsCell },
    ];
    const previewTitle = h('h2', { id: 'cloud-preview-title' });
    const preview = new Table(stepCols('What would be done'), (t) => t.node, { id: 'cloud-preview-table', sortCol: 0, wrap: true, empty: 'waiting for the dry run…' });
    const warn = h('p', { class: 'warn-text', id: 'cloud-preview-warn', hidden: true });
    const confirm = h('button', { type: 'button', class: 'danger confirm', id: 'cloud-confirm', hidden: true });
    const back = h('button', { type: 'button', id: 'cloud-back' }, 'Do nothing');
    const previewBox = h('div', { id: 'cloud-preview', class: 'power-step', hidden: true },
      previewTitle, h('p', { class: 'note' }, 'Dry run: Nova was read, nothing was changed in it, no daemon was started or stopped.'),
      preview.el, warn, h('div', { class: 'toolbar' }, confirm, back));
    const progressTitle = h('h2', { id: 'cloud-progress-title' });
    const progressState = h('span', { id: 'cloud-progress-state' });
    const answered = h('span', { class: 'note', id: 'cloud-progress-count' });
    const link = h('a', { id: 'cloud-action-link' }, 'action page');
    const bar = new StackBar({ class: 'stack big' });
    const progress = new Table(stepCols('Progress'), (t) => t.node, { id: 'cloud-progress-table', sortCol: 0, wrap: true, empty: 'no target' });
    const progressBox = h('div', { id: 'cloud-progress', class: 'power-step', hidden: true },
      progressTitle, h('div', { class: 'toolbar' }, progressState, answered, link), bar.el, progress.el);

    // A newer request makes the answers of an older one moot.
    let seq = 0;
    let planned = null;
    let running = false;
    const setBusy = (b) => { for (const x of Object.values(btns)) x.disabled = b; };
    const needToken = () => { if (o.needToken) o.needToken(); };
    const titleOf = (verb, task, targets, count) => {
      const extra = hvTaskWords(task.hv);
      return `${verb}${extra ? ' (' + extra + ')' : ''}: ${targets} (${plural(count, 'node')})`;
    };

    async function dryRun(op) {
      const t = o.target();
      const verb = HV_VERBS[op];
      if (!t) { say('no node to act on', true); return; }
      if (!token()) { say('paste a token first: every hypervisor action needs one', true); needToken(); return; }
      let task;
      try { task = hvTaskFor(op, vmTimeout.value, force.checked); } catch (e) { say(e.message, true); vmTimeout.focus(); return; }
      const my = ++seq;
      planned = null;
      confirm.hidden = true;
      warn.hidden = true;
      progressBox.hidden = true;
      setBusy(true);
      say(`dry run: asking the root what ${verb.toLowerCase()} would do on ${t.what}…`);
      try {
        const a = await startAction(t.nodes, task, false);
        if (my !== seq) return;
        setText(previewTitle, titleOf(verb, task, a.targets, a.count));
        preview.update([]);
        previewBox.hidden = false;
        const rec = await followAction(a.id, (r) => { if (my === seq) preview.update(hvSteps(r)); }, () => my === seq);
        if (!rec || my !== seq) return;
        const rows = hvSteps(rec);
        const bad = rows.filter((x) => x.state !== 'ok');
        if (bad.length === rows.length) {
          say(`${verb} cannot be done on ${plural(rows.length, 'node')}: the reasons are above`, true);
          return;
        }
        warn.hidden = bad.length === 0;
        setText(warn, bad.length ? `${foldNodes(bad.map((x) => x.node))} would fail (${bad.length} of ${rows.length}): the reasons are above` : '');
        planned = { op, task, targets: a.targets, count: a.count };
        setText(confirm, `${verb} ${a.targets} (${plural(a.count, 'node')})`);
        confirm.hidden = false;
        say('dry run done; confirm to do it for real');
      } catch (e) {
        if (my !== seq) return;
        say(refusal(e), true);
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) needToken();
      } finally {
        if (my === seq && !running) setBusy(false);
      }
    }

    function showProgress(rec) {
      const counts = tally(rec);
      const total = Object.keys(rec.targets || {}).length;
      replace(progressState, h('span', { class: 'pill ' + actionPill(rec.state) }, rec.state), ' ',
        h('span', { class: 'pill ' + modePill(rec.for_real) }, modeText(rec.for_real)));
      setText(answered, `${total - counts.pending} of ${total} done` +
        (counts.failed ? ` · ${counts.failed} failed` : '') + (counts.pending ? ` · ${counts.pending} in progress` : ''));
      bar.update(counts, total);
      progress.update(hvSteps(rec));
    }

    confirm.addEventListener('click', async () => {
      if (!planned || running) return;
      const p = planned;
      const verb = HV_VERBS[p.op];
      const my = ++seq;
      planned = null;
      running = true;
      confirm.hidden = true;
      previewBox.hidden = true;
      setBusy(true);
      say(`${verb} ${p.targets}: sending it for real…`);
      // The progress box may still show the previous action: clear it before anything is sent,
      // so that nothing of that one is read as this one's.
      replace(progressState, h('span', { class: 'pill' }, 'sending'));
      setText(answered, '');
      progress.update([]);
      try {
        const a = await startAction(p.targets, p.task, true);
        setText(progressTitle, titleOf(verb, p.task, a.targets, a.count));
        link.setAttribute('href', actionHref(a.id));
        progress.update([]);
        progressBox.hidden = false;
        say(`${verb} ${a.targets}: running`);
        const rec = await followAction(a.id, showProgress);
        if (!rec) return;
        const c = tally(rec);
        const failed = c.failed + c.unreachable + c.cancelled;
        say(`${verb} ${a.targets}: ${rec.state}, ${c.ok} ok` + (failed ? `, ${failed} not` : ''), failed > 0);
        if (o.onDone) o.onDone(rec);
      } catch (e) {
        say(refusal(e), true);
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) needToken();
      } finally {
        running = false;
        if (my === seq) setBusy(false);
      }
    });
    back.addEventListener('click', () => {
      seq++;
      planned = null;
      previewBox.hidden = true;
      if (!running) setBusy(false);
      say('nothing was done');
    });
    for (const [op, b] of Object.entries(btns)) b.addEventListener('click', () => dryRun(op));

    const showTarget = () => {
      const t = o.target();
      setText(targetLine, t ? 'Acts on ' + t.what : 'no node to act on');
    };
    const el = h('div', { class: 'power-menu' },
      targetLine,
      h('div', { class: 'toolbar' }, btns.enable, btns.disable,
        h('label', { class: 'check', title: 'disable: how long the servers on each hypervisor are given to go' }, 'VM timeout', vmTimeout, 's'),
        h('label', { class: 'check', title: 'disable: stop the daemons even when servers remain at the timeout' }, force, ' force shutoff')),
      msg, previewBox, progressBox);
    return {
      el,
      // The rows changed within the same set: only the line saying what is acted on.
      showTarget,
      // The node set changed: a preview of another set must not be confirmed. A real action
      // already sent goes on and stays shown.
      reset() {
        showTarget();
        if (running) return;
        seq++;
        if (planned || !previewBox.hidden) say('');
        planned = null;
        previewBox.hidden = true;
        setBusy(false);
      },
    };
  }

  function pageCloud() {
    const tok = tokenBox('Nova is not asked: every hypervisor action needs a token');
    const filter = h('input', { class: 'mono', id: 'cloud-filter', size: 28, placeholder: 'node set, e.g. @compute or cn[1-32] (empty: all)', spellcheck: 'false',
      title: 'a node set or group expression, resolved by the root; asked when entered (Enter); empty: every node of the cluster' });
    const count = h('span', { class: 'muted', id: 'cloud-count' });
    const again = h('button', { type: 'button', id: 'cloud-refresh' }, 'Ask again');
    const auto = h('span', { class: 'note', id: 'cloud-auto' });
    const asked = h('div', { class: 'note', id: 'cloud-asked' });
    const askErr = h('div', { class: 'error', id: 'cloud-error', role: 'alert' });
    const rows = new Map();
    const selected = new Set();
    let names = [];
    let askedSet = null;
    const selectCell = (td, r) => {
      let cb = td.firstChild;
      if (!cb) {
        cb = h('input', { type: 'checkbox', class: 'cloud-select', 'data-node': r.name, title: 'act on this node only' });
        cb.setAttribute('aria-label', 'select ' + r.name);
        cb.addEventListener('change', () => {
          if (cb.checked) selected.add(r.name); else selected.delete(r.name);
          menu.reset();
        });
        td.appendChild(cb);
      }
      cb.checked = selected.has(r.name);
    };
    const table = new Table([
      { label: '', cell: selectCell },
      { label: 'Node', name: true, sort: (r) => r.name, text: (r) => r.name, href: (r) => nodeHref(r.name) },
      { label: 'Hypervisor', name: true, sort: (r) => r.row && r.row.hypervisor, text: (r) => (r.row && r.row.hypervisor) || '–' },
      {
        label: 'Runs VMs?', sort: (r) => r.row && r.row.runs_vms,
        cell: (td, r) => {
          const v = r.row ? r.row.runs_vms : null;
          pillCell(td, v === null || v === undefined ? null : yesNo(v), v ? 'up' : 'joining', v === false ? r.row.disabled_reason : '');
        },
      },
      { label: 'Alive?', sort: (r) => r.row && r.row.alive, cell: (td, r) => pillCell(td, r.row ? yesNo(r.row.alive) : null, r.row && r.row.alive ? 'up' : 'bad') },
      { label: 'Nova', sort: (r) => r.row && r.row.nova_state, cell: (td, r) => pillCell(td, r.row ? r.row.nova_state || 'unknown' : null, novaPill(r.row && r.row.nova_state)) },
      { label: 'Agent', sort: (r) => r.row && r.row.agent, cell: (td, r) => pillCell(td, r.row ? r.row.agent : null, statusPill(r.row && r.row.agent)) },
      { label: 'Daemons', sort: (r) => r.row && r.row.daemons, cell: (td, r) => pillCell(td, r.row ? r.row.daemons : null, daemonsPill(r.row && r.row.daemons)) },
      { label: '#VMs', num: true, sort: (r) => (r.st === 'ok' && r.row.servers ? r.row.servers.length : null), text: (r) => (r.st === 'ok' && Array.isArray(r.row.servers) ? r.row.servers.length : '–') },
      {
        label: 'VMs', name: true,
        cell: (td, r) => {
          const servers = r.row && Array.isArray(r.row.servers) ? r.row.servers : [];
          const sig = [r.st, r.reason, JSON.stringify(servers.map((v) => [v.name, v.id, v.status, v.fault]))].join('\u0000');
          if (td._sig === sig) return;
          td._sig = sig;
          if (r.st === 'asking') { replace(td, h('span', { class: 'muted' }, 'asking…')); return; }
          if (r.st !== 'ok') { replace(td, h('span', { class: 'n-bad' }, r.reason)); return; }
          replace(td, servers.length ? servers.map((v, i) => [i ? ', ' : '',
            h('span', { class: 'vm' + (v.status === 'ERROR' ? ' n-bad' : ''), title: [v.id, v.fault].filter((x) => x).join(' · ') }, vmText(v))]) : h('span', { class: 'muted' }, 'none'));
        },
      },
    ], (r) => r.name, { id: 'cloud-table', sortCol: 1, wrap: true, empty: 'no node asked yet' });
    const draw = () => table.update(names.map((n) => rows.get(n)));

    // Acts on the selected rows if any, else on the filter's expression as it is (the root
    // resolves groups).
    const target = () => {
      const sel = names.filter((n) => selected.has(n));
      if (sel.length) {
        const f = foldNodes(sel);
        return { nodes: f, what: `the selected rows: ${f} (${plural(sel.length, 'node')})` };
      }
      if (!askedSet) return null;
      return { nodes: askedSet, what: `the filter: ${askedSet}` + (names.length ? ` (${plural(names.length, 'node')} in the table)` : '') };
    };

    // Results into the table as they come.
    const apply = (rec) => {
      const now = Object.keys(rec.targets || {}).sort(naturalCmp);
      const moved = now.join('\u0000') !== names.join('\u0000');
      names = now;
      for (const n of Array.from(rows.keys())) if (!rec.targets[n]) rows.delete(n);
      for (const n of Array.from(selected)) if (!rec.targets[n]) selected.delete(n);
      for (const n of names) {
        const r = rows.get(n) || { name: n, st: 'asking', row: null, reason: '' };
        const x = hvStatusOf(rec.targets[n]);
        if (x) { r.st = x.ok ? 'ok' : 'failed'; r.row = x.row; r.reason = x.reason; }
        rows.set(n, r);
      }
      draw();
      if (moved) menu.reset(); else menu.showTarget();
      const list = names.map((n) => rows.get(n));
      const known = list.filter((r) => r.row && r.row.runs_vms !== null && r.row.runs_vms !== undefined);
      const vms = known.reduce((a, r) => a + (Array.isArray(r.row.servers) ? r.row.servers.length : 0), 0);
      setText(count, `${plural(names.length, 'node')} · ${known.length} known to Nova · ${known.filter((r) => r.row.runs_vms).length} run VMs · ` +
        `${known.filter((r) => r.row.alive).length} alive · ${plural(vms, 'VM')}`);
    };

    // The status, asked now and again every CLOUD_REFRESH_MS while the page is visible.
    const mine = gen;
    let askSeq = 0;
    let inFlight = false;
    let lastAsk = 0;
    let timer = null;
    const schedule = () => {
      clearTimeout(timer);
      timer = null;
      if (mine !== gen || !token()) { setText(auto, ''); return; }
      if (document.visibilityState !== 'visible') { setText(auto, 'paused while the page is hidden'); return; }
      setText(auto, `asked again every ${CLOUD_REFRESH_MS / 1000} s while this page is shown`);
      timer = setTimeout(() => {
        timer = null;
        if (mine !== gen || document.visibilityState !== 'visible') return;
        if (inFlight) schedule(); else ask();
      }, Math.max(0, lastAsk + CLOUD_REFRESH_MS - Date.now()));
    };
    const onVisible = () => schedule();
    document.addEventListener('visibilitychange', onVisible);
    onLeave(() => { document.removeEventListener('visibilitychange', onVisible); clearTimeout(timer); });

    const ask = async () => {
      const my = ++askSeq;
      clearTimeout(timer);
      setText(askErr, '');
      if (!token()) { setText(asked, 'no token: Nova was not asked'); schedule(); return; }
      inFlight = true;
      let nodes = filter.value.trim();
      if (!nodes) {
        // Every node of the cluster: `@*` would need group files.
        try { nodes = foldNodes((await api('/nodes')).map((n) => n.name)) || ''; } catch (e) { nodes = ''; }
        if (!nodes) { inFlight = false; setText(asked, 'the cluster has no node yet'); schedule(); return; }
      }
      lastAsk = Date.now();
      setText(asked, `asking Nova and the agents about ${nodes}…`);
      try {
        const a = await startAction(nodes, hvStatusTask(), true);
        if (my !== askSeq) return;
        if (askedSet !== nodes) { askedSet = nodes; menu.reset(); }
        const rec = await followAction(a.id, (r) => { if (my === askSeq) apply(r); }, () => my === askSeq);
        if (!rec || my !== askSeq) return;
        const c = tally(rec);
        setText(asked, `as of ${new Date().toLocaleTimeString()}: ${a.targets}, ${c.ok} of ${plural(Object.keys(rec.targets).length, 'node')} known to Nova` +
          (c.failed ? ` · ${c.failed} not (the reasons are in the VMs column)` : '') + (c.unreachable ? ` · ${c.unreachable} unreachable` : ''));
        asked.setAttribute('data-action', rec.id);
      } catch (e) {
        if (my !== askSeq) return;
        setText(asked, '');
        setText(askErr, refusal(e));
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) tok.focus();
      } finally {
        if (my === askSeq) { inFlight = false; schedule(); }
      }
    };
    const menu = hvMenu({ target, onDone: () => ask(), needToken: () => tok.focus() });

    const saved = sessionStorage.getItem(CLOUD_FILTER_KEY);
    filter.value = saved === null ? '' : saved;
    replace(view,
      h('h1', null, 'Cloud', h('span', { class: 'sub' }, 'OpenStack hypervisors: Nova\u2019s view beside each node\u2019s agent and daemons; every change is a dry run first')),
      panel('Token', tok.el), h('p'),
      h('div', { class: 'toolbar' }, filter, again, count, auto),
      panel('Hypervisors', asked, askErr, table.el), h('p'),
      panel('Enable or disable (the selected rows, or else the filter)', menu.el));
    // A new expression is asked when it is entered (Enter or leaving the field), not per key:
    // each ask is an audited action.
    filter.addEventListener('change', () => {
      const v = filter.value.trim();
      sessionStorage.setItem(CLOUD_FILTER_KEY, v);
      selected.clear();
      ask();
    });
    again.addEventListener('click', () => ask());
    tok.onChange(() => ask());
    // The link to the root, shown as for the other pages (the status itself needs a token).
    api('/status').then(connOk, connBad);
    menu.reset();
    ask();
  }

  // The node page's cloud panel: the node's row of `hv status`, shown only when the node is a
  // hypervisor Nova knows. Asked once when the page opens, and only with a token and when this
  // root has run hypervisor actions already (an `hv` action in GET /actions): a root without
  // [openstack] would refuse the ask, and a node page should not provoke refusals.
  function nodeCloud(name) {
    const kv = h('div', { class: 'kv inline', id: 'node-cloud-kv' });
    const el = panel('Cloud', kv, h('p', { class: 'note' }, h('a', { href: '#/cloud' }, 'Every hypervisor, enable and disable: the Cloud page')));
    el.id = 'node-cloud';
    el.hidden = true;
    const mine = gen;
    (async () => {
      if (!token()) return;
      try {
        const list = await api('/actions?limit=100');
        if (mine !== gen || !Array.isArray(list) || !list.some((a) => a.kind === 'hv')) return;
        const a = await startAction(name, hvStatusTask(), true);
        const rec = await followAction(a.id, () => {});
        if (!rec || mine !== gen) return;
        const x = hvStatusOf((rec.targets || {})[name]);
        if (!x || !x.ok) return;
        const r = x.row;
        const servers = Array.isArray(r.servers) ? r.servers : [];
        const pill = (text, cls) => h('span', { class: 'pill ' + cls }, text);
        const rowsKv = [
          ['hypervisor', r.hypervisor || '–'],
          ['runs VMs?', [pill(yesNo(r.runs_vms), r.runs_vms ? 'up' : 'joining'), r.disabled_reason ? ' ' + r.disabled_reason : '']],
          ['alive?', pill(yesNo(r.alive), r.alive ? 'up' : 'bad')],
          ['Nova', pill(r.nova_state || 'unknown', novaPill(r.nova_state))],
          ['agent', pill(r.agent || '?', statusPill(r.agent))],
          ['daemons', pill(r.daemons || '?', daemonsPill(r.daemons))],
          ['#VMs', String(servers.length)],
          ['VMs', servers.length ? servers.map(vmText).join(', ') : 'none'],
        ];
        replace(kv, rowsKv.map(([k, v]) => [h('span', { class: 'k' }, k), h('span', { class: 'v' }, v)]));
        kv.setAttribute('data-action', rec.id);
        el.hidden = false;
      } catch (_) {
        // Not a hypervisor (no OpenStack any more, or out of the token's scope): no panel.
      }
    })();
    return el;
  }

  // ----- Guests ------------------------------------------------------------------------------------

  // QEMU guests go through the action path like any action (POST /actions with a `vm` task, the
  // token's scope, the audit log), carried out by each node's agent. `list` reads and any token
  // may send it (the page sends it as a dry run: reads run in one); `logs` reads one guest's serial
  // log within the token's scope; `stop` runs as a dry run first (each node checks the names),
  // whose preview the operator confirms by the guests' names before the real one is sent.
  // How often the list is asked again while the page is shown: each ask is an audited action that
  // reaches every node's agent, so no faster, and never while the tab is hidden.
  const GUESTS_REFRESH_MS = 10000;
  const GUESTS_FILTER_KEY = 'banyan.guestsFilter';
  // The tail of a serial log the page shows (the CLI's default too).
  const GUEST_LOG_BYTES = 16 * 1024;
  // How long a stopped guest is given to power off before QEMU is told to quit (the CLI's default).
  const GUEST_STOP_MS = 30000;
  // The whole stop action: the power-off time, then QEMU's quit and kill, and slack for the tree
  // (cli/src/vm.rs, stop_action_timeout).
  const GUEST_STOP_ACTION_MS = GUEST_STOP_MS + 30000;
  // A list answers at once from each agent: a host silent this long is shown unreachable rather
  // than keeping its line blank for the root's default minute.
  const GUEST_LIST_TIMEOUT_MS = 20000;
  const listGuests = (nodes) => adminCall('/actions', { nodes, for_real: false, task: { vm: { op: 'list' } }, timeout_ms: GUEST_LIST_TIMEOUT_MS });
  const guestKey = (host, name) => host + ':' + name;
  const guestHref = (host, name) => '#/guests/' + enc(guestKey(host, name));
  const vmStatePill = (st) => ({ running: 'up', stopping: 'joining', crashed: 'bad', failed: 'bad', stopped: 'clear', dry_run: 'dry' }[st] || 'stale');
  // Memory as the CLI writes it: whole GiB as `2G`, else MiB as `512M`.
  const mibText = (m) => (typeof m !== 'number' ? '–' : m >= 1024 && m % 1024 === 0 ? m / 1024 + 'G' : m + 'M');
  // A serial console's text as it may be shown: its lines, and every other control character
  // written as an escape (as the CLI does, cli/src/escape.rs), and the direction overrides too, so
  // that nothing a guest printed reads as something else. It goes into the page as text anyway.
  const consoleText = (t) => String(t).replace(/\r\n/g, '\n')
    .replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
      (c) => (c === '\r' ? '\\r' : '\\u{' + c.charCodeAt(0).toString(16) + '}'));
  // A guest that is itself a node of the tree (`--join`): `HOST-vm-NAME` (protocol's vm_node_name).
  // The host part is taken when it names a node of the tree; a guest name may hold `-vm-` itself,
  // so each split is tried, the longest host first.
  function guestOfNode(name, known) {
    for (let i = name.lastIndexOf('-vm-'); i > 0; i = name.lastIndexOf('-vm-', i - 1)) {
      const host = name.slice(0, i), guest = name.slice(i + 4);
      if (guest && known.has(host)) return { host, guest };
    }
    return null;
  }
  // Whether each node of the tree is up, from /nodes (the AGENT column of `banyan vm list`).
  async function agentsUp() {
    const nodes = await api('/nodes');
    return new Map((Array.isArray(nodes) ? nodes : []).map((n) => [String(n.name), n.status === 'up']));
  }
  const agentWord = (node, up) => (!node ? '-' : !up ? '?' : up.get(node) ? 'up' : 'down');
  const agentPill = (w) => ({ up: 'up', down: 'lost' }[w] || 'clear');

  // What a list action says: the guests of each host that answered, and one line for each host
  // that did not (`{host, state, text}`; pending hosts are left out of both).
  function guestsOf(rec) {
    const guests = [], problems = [], pending = [];
    for (const [host, t] of Object.entries(rec.targets || {})) {
      if (t.state === 'pending') { pending.push(host); continue; }
      const r = t.result;
      if (t.state === 'ok' && r) {
        for (const v of Array.isArray(r.vms) ? r.vms : []) {
          if (!v || typeof v.name !== 'string') continue;
          guests.push(Object.assign({}, v, { host, key: guestKey(host, v.name) }));
        }
        continue;
      }
      const why = (r && r.summary) || t.error || '';
      problems.push({ host, state: t.state, text: `${host}: ${t.state === 'unreachable' ? 'unreachable' : t.state}` + (why ? ': ' + why : '') });
    }
    return { guests, problems, pending };
  }

  // The columns of a guest table; `opts.select(td, g)` and `opts.stop(td, g)` add the checkbox and
  // the stop button, `opts.open(g)` what a click on the name does (else it is a plain link).
  function guestColumns(opts) {
    const nameCell = (td, g) => {
      let a = td.firstChild;
      if (!a) {
        a = td.appendChild(h('a', { class: 'guest-open' }));
        a.addEventListener('click', (ev) => {
          // A click with a modifier opens the link as the browser would (a new tab).
          if (!opts.open || !td._g || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return;
          ev.preventDefault();
          opts.open(td._g);
        });
      }
      td._g = g;
      const href = guestHref(g.host, g.name);
      if (a.getAttribute('href') !== href) a.setAttribute('href', href);
      setText(a, g.name);
    };
    const cols = [
      opts.select ? { label: '', cell: opts.select } : null,
      { label: 'Host', name: true, sort: (g) => g.host, text: (g) => g.host, href: (g) => nodeHref(g.host) },
      { label: 'Name', name: true, sort: (g) => g.name, cell: nameCell },
      { label: 'State', sort: (g) => g.state, text: (g) => String(g.state || 'unknown'), pill: (g) => vmStatePill(g.state) },
      { label: 'CPUs', num: true, sort: (g) => g.cpus, text: (g) => (typeof g.cpus === 'number' ? String(g.cpus) : '–') },
      { label: 'Memory', num: true, sort: (g) => g.memory_mib, text: (g) => mibText(g.memory_mib) },
      { label: 'Accel', sort: (g) => g.accel, text: (g) => g.accel || '–' },
      { label: 'Uptime', num: true, sort: (g) => g.uptime_ms, text: (g) => (g.uptime_ms > 0 ? dur(g.uptime_ms) : '–') },
      { label: 'TTL left', num: true, sort: (g) => g.ttl_left_ms, text: (g) => (typeof g.ttl_left_ms === 'number' ? dur(g.ttl_left_ms) : '–') },
      { label: 'Agent', sort: (g) => g.agent, cell: (td, g) => pillCell(td, g.agent === '-' ? null : g.agent, agentPill(g.agent), g.node || '') },
      { label: 'Detail', name: true, text: (g) => g.detail || '' },
      opts.stop ? { label: '', cell: opts.stop } : null,
    ];
    return cols.filter((c) => c);
  }

  // The stop menu: a dry run for the given guests and its preview (each guest and what would be
  // done), a confirmation naming the guests, then the real stop followed live. One order carries
  // one task for all its targets, so guests are stopped by one action per set of names, with the
  // hosts that have exactly those names (as `banyan vm stop` does).
  // o.onDone() runs when a real stop ended; o.needToken() when a token is missing or refused.
  function guestStopMenu(o) {
    const msg = h('div', { id: 'guests-stop-msg', role: 'status' });
    const say = (text, bad) => { setText(msg, text); msg.className = bad ? 'error' : 'note'; };
    const cols = (third) => [
      { label: 'Guest', name: true, sort: (r) => r.key, text: (r) => r.key, href: (r) => guestHref(r.host, r.name) },
      { label: 'State', sort: (r) => r.state, text: (r) => r.state, pill: (r) => phasePill(r.state) },
      { label: third, name: true, text: (r) => r.text },
    ];
    const previewTitle = h('h2', { id: 'guests-stop-preview-title' });
    const preview = new Table(cols('What would be done'), (r) => r.key, { id: 'guests-stop-preview-table', sortCol: 0, wrap: true, empty: 'waiting for the dry run…' });
    const warn = h('p', { class: 'warn-text', id: 'guests-stop-preview-warn', hidden: true });
    const confirm = h('button', { type: 'button', class: 'danger confirm', id: 'guests-stop-confirm', hidden: true });
    const back = h('button', { type: 'button', id: 'guests-stop-back' }, 'Do nothing');
    const previewBox = h('div', { id: 'guests-stop-preview', class: 'power-step', hidden: true },
      previewTitle, h('p', { class: 'note' }, 'Dry run: each host checked the names; no guest was stopped.'), preview.el, warn,
      h('div', { class: 'toolbar' }, confirm, back));
    const progressTitle = h('h2', { id: 'guests-stop-progress-title' });
    const progressState = h('span', { id: 'guests-stop-progress-state' });
    const answered = h('span', { class: 'note', id: 'guests-stop-progress-count' });
    const links = h('span', { id: 'guests-stop-links' });
    const progress = new Table(cols('Result'), (r) => r.key, { id: 'guests-stop-progress-table', sortCol: 0, wrap: true, empty: 'no guest' });
    const progressBox = h('div', { id: 'guests-stop-progress', class: 'power-step', hidden: true },
      progressTitle, h('div', { class: 'toolbar' }, progressState, answered, links), progress.el);

    // A newer request makes the answers of an older one moot.
    let seq = 0;
    let planned = null;
    let running = false;
    const buttons = new Set();
    const setBusy = (b) => {
      for (const x of Array.from(buttons)) {
        // The rows' buttons go with their rows.
        if (!x.isConnected && x.id !== 'guests-stop') buttons.delete(x); else x.disabled = b;
      }
    };
    const needToken = () => { if (o.needToken) o.needToken(); };
    const named = (gs) => {
      const keys = gs.map((g) => guestKey(g.host, g.name)).sort(natural.compare);
      return keys.length <= 8 ? keys.join(', ') : keys.slice(0, 8).join(', ') + ` and ${keys.length - 8} more`;
    };
    // [{nodes, hosts, names}]: one action each.
    const groupsOf = (gs) => {
      const perHost = new Map();
      for (const g of gs) {
        const l = perHost.get(g.host) || [];
        if (!l.includes(g.name)) l.push(g.name);
        perHost.set(g.host, l);
      }
      const perNames = new Map();
      for (const [host, names] of perHost) {
        names.sort(naturalCmp);
        const k = names.join('\u0000');
        const grp = perNames.get(k) || { names, hosts: [] };
        grp.hosts.push(host);
        perNames.set(k, grp);
      }
      return Array.from(perNames.values()).map((grp) => Object.assign(grp, { nodes: foldNodes(grp.hosts) }));
    };
    const stopTask = (names) => ({ vm: { op: { stop: { names, all: false, timeout_ms: GUEST_STOP_MS } } } });
    const send = (grp, forReal) => adminCall('/actions', {
      nodes: grp.nodes, for_real: forReal, task: stopTask(grp.names), timeout_ms: forReal ? GUEST_STOP_ACTION_MS : undefined,
    });
    // One row per guest of the groups, from the latest record of each group's action.
    const rowsOf = (groups, recs, forReal) => {
      const rows = [];
      groups.forEach((grp, i) => {
        const rec = recs[i];
        for (const host of grp.hosts) {
          const t = rec && rec.targets ? rec.targets[host] : null;
          for (const name of grp.names) {
            const row = { key: guestKey(host, name), host, name, state: 'pending', text: forReal ? 'stopping…' : 'waiting for ' + host + '…' };
            if (t && t.state !== 'pending') {
              const r = t.result;
              const v = r && Array.isArray(r.vms) ? r.vms.find((x) => x && x.name === name) : null;
              const good = v ? (forReal ? v.state === 'stopped' : v.state === 'dry_run') : false;
              row.state = good ? 'ok' : t.state === 'ok' ? 'failed' : t.state;
              row.text = (v && v.detail) || (r && r.summary) || t.error || t.state;
            } else if (t && t.live && t.live.stdout) {
              row.text = t.live.stdout.trim().split('\n').pop();
            }
            rows.push(row);
          }
        }
      });
      return rows;
    };

    async function dryRun(gs) {
      if (!gs.length) { say('no guest to stop: select some in the table', true); return; }
      if (!token()) { say('paste a token first: stopping guests needs one', true); needToken(); return; }
      const my = ++seq;
      planned = null;
      confirm.hidden = true;
      warn.hidden = true;
      progressBox.hidden = true;
      setBusy(true);
      const groups = groupsOf(gs);
      say(`dry run: asking the hosts about ${named(gs)}…`);
      try {
        const started = await Promise.all(groups.map((grp) => send(grp, false)));
        if (my !== seq) return;
        setText(previewTitle, `Stop ${plural(gs.length, 'guest')}: ${named(gs)}`);
        const recs = groups.map(() => null);
        preview.update(rowsOf(groups, recs, false));
        previewBox.hidden = false;
        const ends = await Promise.all(started.map((a, i) => followAction(a.id, (r) => {
          if (my !== seq) return;
          recs[i] = r;
          preview.update(rowsOf(groups, recs, false));
        }, () => my === seq)));
        if (my !== seq || ends.some((r) => !r)) return;
        const rows = rowsOf(groups, ends, false);
        const good = rows.filter((r) => r.state === 'ok');
        const bad = rows.filter((r) => r.state !== 'ok');
        if (!good.length) {
          say(`no guest can be stopped (${plural(rows.length, 'guest')}): the reasons are above`, true);
          return;
        }
        warn.hidden = bad.length === 0;
        setText(warn, bad.length ? `${bad.map((r) => r.key).join(', ')} would fail (${bad.length} of ${rows.length}): the reasons are above; only the others are stopped` : '');
        const keep = good.map((r) => ({ host: r.host, name: r.name }));
        planned = keep;
        setText(confirm, `Stop ${plural(keep.length, 'guest')}: ${named(keep)}`);
        confirm.hidden = false;
        say('dry run done; confirm to stop them for real');
      } catch (e) {
        if (my !== seq) return;
        say(refusal(e), true);
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) needToken();
      } finally {
        if (my === seq && !running) setBusy(false);
      }
    }

    function showProgress(groups, recs) {
      const rows = rowsOf(groups, recs, true);
      const done = rows.filter((r) => r.state !== 'pending').length;
      const failed = rows.filter((r) => r.state !== 'pending' && r.state !== 'ok').length;
      const states = recs.map((r) => (r ? r.state : 'sending'));
      const state = states.includes('sending') || states.includes('running') ? 'running' : states.every((s) => s === 'done') ? 'done' : states.find((s) => s !== 'done');
      replace(progressState, h('span', { class: 'pill ' + actionPill(state) }, state), ' ', h('span', { class: 'pill ' + modePill(true) }, modeText(true)));
      setText(answered, `${done} of ${plural(rows.length, 'guest')} done` + (failed ? ` · ${failed} failed` : ''));
      progress.update(rows);
      return { rows, failed };
    }

    confirm.addEventListener('click', async () => {
      if (!planned || running) return;
      const gs = planned;
      const my = ++seq;
      planned = null;
      running = true;
      confirm.hidden = true;
      previewBox.hidden = true;
      setBusy(true);
      const groups = groupsOf(gs);
      say(`stopping ${named(gs)}: sending it for real…`);
      // The progress box may still show the previous stop: cleared before anything is sent.
      replace(progressState, h('span', { class: 'pill' }, 'sending'));
      setText(answered, '');
      clear(links);
      progress.update([]);
      try {
        const started = await Promise.all(groups.map((grp) => send(grp, true)));
        setText(progressTitle, `Stop ${plural(gs.length, 'guest')}: ${named(gs)}`);
        add(links, started.map((a, i) => [i ? ' ' : '', h('a', { href: actionHref(a.id), class: 'guests-stop-link' }, started.length > 1 ? 'action ' + (i + 1) : 'action page')]));
        progressBox.hidden = false;
        const recs = groups.map(() => null);
        showProgress(groups, recs);
        say(`stopping ${named(gs)}: running`);
        const ends = await Promise.all(started.map((a, i) => followAction(a.id, (r) => { recs[i] = r; showProgress(groups, recs); })));
        if (ends.some((r) => !r)) return;
        const { rows, failed } = showProgress(groups, ends);
        say(`stopped ${rows.length - failed} of ${plural(rows.length, 'guest')}` + (failed ? `; ${failed} not: the reasons are above` : ''), failed > 0);
        if (o.onDone) o.onDone();
      } catch (e) {
        say(refusal(e), true);
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) needToken();
      } finally {
        running = false;
        if (my === seq) setBusy(false);
      }
    });
    back.addEventListener('click', () => {
      seq++;
      planned = null;
      previewBox.hidden = true;
      if (!running) setBusy(false);
      say('nothing was done');
    });

    return {
      el: h('div', { class: 'power-menu' }, msg, previewBox, progressBox),
      stop: dryRun,
      // Buttons that start a dry run, disabled while one runs.
      button(b) { buttons.add(b); b.disabled = running; return b; },
      // The guests changed under a preview: it must not be confirmed. A real stop goes on.
      reset() {
        if (running || previewBox.hidden) return;
        seq++;
        planned = null;
        previewBox.hidden = true;
        setBusy(false);
        say('the guests changed: ask for the dry run again');
      },
    };
  }

  // The console log panel: the tail of one guest's serial log, read when a guest is opened and
  // again on request (each read is an audited action).
  function guestLog() {
    const title = h('h2', { id: 'guests-log-title' }, 'Console log');
    const note = h('div', { class: 'note', id: 'guests-log-note' }, 'click a guest\u2019s name to read the end of its serial console');
    const err = h('div', { class: 'error', id: 'guests-log-error', role: 'alert' });
    const again = h('button', { type: 'button', id: 'guests-log-refresh', hidden: true }, 'Read again');
    const out = h('pre', { class: 'out', id: 'guests-log' });
    let seq = 0;
    let cur = null;
    const read = async () => {
      const my = ++seq;
      if (!cur) return;
      const { host, name } = cur;
      setText(err, '');
      if (!token()) { setText(note, 'no token: the log was not read (reading a guest\u2019s log needs one)'); return; }
      setText(note, `reading the last ${bytes(GUEST_LOG_BYTES)} of ${guestKey(host, name)}\u2019s serial log…`);
      try {
        const a = await startAction(host, { vm: { op: { logs: { name, bytes: GUEST_LOG_BYTES } } } }, false);
        const rec = await followAction(a.id, () => {}, () => my === seq);
        if (!rec || my !== seq) return;
        const t = (rec.targets || {})[host];
        if (!t || t.state !== 'ok' || !t.result) {
          const why = (t && ((t.result && t.result.summary) || t.error)) || (t ? t.state : 'no answer');
          setText(note, '');
          setText(err, `${host}: ${t && t.state === 'unreachable' ? 'unreachable' : 'failed'}: ${why}`);
          return;
        }
        const text = consoleText(t.result.stdout || '');
        setText(out, text);
        out.setAttribute('data-action', rec.id);
        setText(note, `the last ${bytes(GUEST_LOG_BYTES)} of its serial log as of ${new Date().toLocaleTimeString()}` + (text ? '' : ': empty'));
        out.scrollTop = out.scrollHeight;
      } catch (e) {
        if (my !== seq) return;
        setText(note, '');
        setText(err, refusal(e));
      }
    };
    again.addEventListener('click', read);
    return {
      el: h('div', { id: 'guests-log-box' }, title, h('div', { class: 'toolbar' }, again, note), err, out),
      open(host, name) {
        cur = { host, name };
        setText(title, 'Console log of ' + guestKey(host, name));
        setText(out, '');
        out.removeAttribute('data-action');
        again.hidden = false;
        read();
      },
      read,
      current: () => cur,
    };
  }

  function pageGuests(arg) {
    const tok = tokenBox('guests are not listed: every request about them needs a token (any token lists them)');
    const filter = h('input', { class: 'mono', id: 'guests-filter', size: 28, placeholder: 'node set, e.g. @compute or cn[1-32] (empty: all)', spellcheck: 'false',
      title: 'a node set or group expression, resolved by the root; asked when entered (Enter); empty: every node of the cluster' });
    const count = h('span', { class: 'muted', id: 'guests-count' });
    const again = h('button', { type: 'button', id: 'guests-refresh' }, 'Refresh');
    const auto = h('span', { class: 'note', id: 'guests-auto' });
    const asked = h('div', { class: 'note', id: 'guests-asked' });
    const askErr = h('div', { class: 'error', id: 'guests-error', role: 'alert' });
    const hostErr = h('div', { class: 'error', id: 'guests-hosts', role: 'alert' });
    const rows = new Map();
    const selected = new Set();
    let up = null;
    let askedSet = null;
    const log = guestLog();
    const selectCell = (td, g) => {
      let cb = td.firstChild;
      if (!cb) {
        cb = h('input', { type: 'checkbox', class: 'guests-select', title: 'select this guest' });
        cb.addEventListener('change', () => {
          if (!td._g) return;
          if (cb.checked) selected.add(td._g.key); else selected.delete(td._g.key);
          showSelected();
        });
        td.appendChild(cb);
      }
      td._g = g;
      cb.setAttribute('aria-label', 'select ' + g.key);
      cb.checked = selected.has(g.key);
    };
    const stopCell = (td, g) => {
      td._g = g;
      if (td.firstChild) return;
      const b = stop.button(h('button', { type: 'button', class: 'danger guest-stop' }, 'Stop…'));
      b.addEventListener('click', () => { if (td._g) stop.stop([td._g]); });
      td.appendChild(b);
    };
    const open = (g) => {
      history.replaceState(null, '', guestHref(g.host, g.name));
      document.title = 'banyan · ' + g.key;
      log.open(g.host, g.name);
      markOpen();
    };
    const table = new Table(guestColumns({ select: selectCell, stop: stopCell, open }), (g) => g.key,
      { id: 'guests-table', sortCol: 1, wrap: true, empty: 'not asked yet' });
    const markOpen = () => {
      const c = log.current();
      const k = c ? guestKey(c.host, c.name) : null;
      for (const [key, r] of table.byKey) r.tr.classList.toggle('open', key === k);
    };
    const draw = () => {
      const list = Array.from(rows.values()).map((g) => Object.assign(g, { agent: agentWord(g.node, up) }));
      table.update(list);
      markOpen();
      const hosts = new Set(list.map((g) => g.host));
      setText(count, `${plural(list.length, 'guest')} on ${plural(hosts.size, 'host')} · ${list.filter((g) => g.state === 'running').length} running`);
    };
    const stopSel = h('button', { type: 'button', class: 'danger', id: 'guests-stop' }, 'Stop the selected…');
    const selLine = h('span', { class: 'note', id: 'guests-selected' });
    const showSelected = () => {
      for (const k of Array.from(selected)) if (!rows.has(k)) selected.delete(k);
      setText(selLine, selected.size ? `${plural(selected.size, 'guest')} selected` : 'none selected: tick guests in the table, or use a row\u2019s Stop button');
    };
    const stop = guestStopMenu({ onDone: () => ask(), needToken: () => tok.focus() });
    stop.button(stopSel);
    stopSel.addEventListener('click', () => stop.stop(Array.from(selected).map((k) => rows.get(k)).filter((g) => g)));

    // Results into the table as they come: a host's guests are replaced once it answered, so a
    // host still answering keeps its rows of the last ask.
    const apply = (rec) => {
      const { guests, problems, pending } = guestsOf(rec);
      const answered = new Set(Object.keys(rec.targets || {}).filter((n) => !pending.includes(n)));
      const before = Array.from(rows.keys()).join('\u0000');
      const targets = rec.targets || {};
      for (const [k, g] of Array.from(rows)) {
        if (!targets[g.host] || answered.has(g.host)) rows.delete(k);
      }
      for (const g of guests) rows.set(g.key, g);
      const after = Array.from(rows.keys()).join('\u0000');
      if (before !== after) stop.reset();
      setText(table.emptyRow.firstChild, 'no guest on ' + (askedSet || 'these nodes'));
      replace(hostErr, problems.sort((a, b) => naturalCmp(a.host, b.host)).map((p) => h('div', { 'data-host': p.host }, p.text)));
      draw();
      showSelected();
    };

    // The list, asked now and again every GUESTS_REFRESH_MS while the page is visible.
    const mine = gen;
    let askSeq = 0;
    let inFlight = false;
    let lastAsk = 0;
    let timer = null;
    const schedule = () => {
      clearTimeout(timer);
      timer = null;
      if (mine !== gen || !token()) { setText(auto, ''); return; }
      if (document.visibilityState !== 'visible') { setText(auto, 'paused while the page is hidden'); return; }
      setText(auto, `asked again every ${GUESTS_REFRESH_MS / 1000} s while this page is shown`);
      timer = setTimeout(() => {
        timer = null;
        if (mine !== gen || document.visibilityState !== 'visible') return;
        if (inFlight) schedule(); else ask();
      }, Math.max(0, lastAsk + GUESTS_REFRESH_MS - Date.now()));
    };
    const onVisible = () => schedule();
    document.addEventListener('visibilitychange', onVisible);
    onLeave(() => { document.removeEventListener('visibilitychange', onVisible); clearTimeout(timer); });

    const ask = async () => {
      const my = ++askSeq;
      clearTimeout(timer);
      setText(askErr, '');
      if (!token()) { setText(asked, 'no token: the guests were not listed'); schedule(); return; }
      inFlight = true;
      lastAsk = Date.now();
      try {
        // The tree as it is now: the node set to ask (empty filter: every node) and the AGENT
        // column of joined guests.
        up = await agentsUp();
        if (my !== askSeq) return;
        connOk();
        const nodes = filter.value.trim() || foldNodes(Array.from(up.keys())) || '';
        if (!nodes) { setText(asked, 'the cluster has no node yet'); return; }
        setText(asked, `listing the guests of ${nodes}…`);
        const a = await listGuests(nodes);
        if (my !== askSeq) return;
        if (askedSet !== nodes) { askedSet = nodes; rows.clear(); selected.clear(); stop.reset(); }
        const rec = await followAction(a.id, (r) => { if (my === askSeq) apply(r); }, () => my === askSeq);
        if (!rec || my !== askSeq) return;
        const c = tally(rec);
        const total = Object.keys(rec.targets || {}).length;
        setText(asked, `as of ${new Date().toLocaleTimeString()}: ${a.targets}, ${c.ok} of ${plural(total, 'host')} answered` +
          (c.failed || c.unreachable ? ' (the others are below)' : ''));
        asked.setAttribute('data-action', rec.id);
      } catch (e) {
        if (my !== askSeq) return;
        setText(asked, '');
        setText(askErr, refusal(e));
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) tok.focus();
        else if (!(e instanceof ApiError)) connBad(e);
      } finally {
        if (my === askSeq) { inFlight = false; schedule(); }
      }
    };

    const saved = sessionStorage.getItem(GUESTS_FILTER_KEY);
    filter.value = saved === null ? '' : saved;
    replace(view,
      h('h1', null, 'Guests', h('span', { class: 'sub' }, 'the QEMU guests of each node\u2019s agent; every stop is a dry run first')),
      panel('Token', tok.el), h('p'),
      h('div', { class: 'toolbar' }, filter, again, count, auto),
      panel('Guests', asked, askErr, hostErr, table.el,
        h('div', { class: 'toolbar' }, stopSel, selLine), stop.el), h('p'),
      panel('Console', log.el));
    // A new expression is asked when it is entered (Enter or leaving the field), not per key:
    // each ask is an audited action.
    filter.addEventListener('change', () => {
      sessionStorage.setItem(GUESTS_FILTER_KEY, filter.value.trim());
      ask();
    });
    again.addEventListener('click', () => ask());
    tok.onChange(() => { ask(); if (log.current()) log.read(); });
    showSelected();
    ask();
    // `#/guests/HOST:NAME` (the node page's links): that guest's log at once.
    const m = arg === null ? null : /^(.+):([^:]+)$/.exec(arg);
    if (m) log.open(m[1], m[2]);
  }

  // The node page's guests panel: the node's guests (one list action on it, asked when the page
  // opens), with links to their entries on the Guests page; and, for a node that is itself a
  // guest (`HOST-vm-NAME`, its host a node of the tree), a link back to its host.
  function nodeGuests(name) {
    const of = h('div', { class: 'note', id: 'node-guest-of', hidden: true });
    const state = h('div', { class: 'note', id: 'node-guests-state' });
    const err = h('div', { class: 'error', id: 'node-guests-error', role: 'alert' });
    const table = new Table(guestColumns({}), (g) => g.key, { id: 'node-guests-table', sortCol: 1, wrap: true, empty: 'not asked yet' });
    const el = panel('Guests', of, state, err, table.el,
      h('p', { class: 'note' }, h('a', { href: '#/guests' }, 'Every guest, their consoles, and stop: the Guests page')));
    el.id = 'node-guests';
    const mine = gen;
    let askSeq = 0;
    const ask = async () => {
      const my = ++askSeq;
      setText(err, '');
      try {
        const up = await agentsUp();
        if (my !== askSeq || mine !== gen) return;
        const host = guestOfNode(name, up);
        if (host) {
          replace(of, 'This node is the guest ', h('a', { href: guestHref(host.host, host.guest), id: 'node-guest-entry' }, host.guest),
            ' of ', h('a', { href: nodeHref(host.host), id: 'node-guest-host' }, host.host), '.');
          of.hidden = false;
        }
        if (!token()) { setText(state, 'no token: its guests were not listed (any token lists them)'); return; }
        setText(state, 'listing its guests…');
        const a = await listGuests(name);
        const rec = await followAction(a.id, () => {}, () => my === askSeq);
        if (!rec || my !== askSeq) return;
        const { guests, problems } = guestsOf(rec);
        for (const g of guests) g.agent = agentWord(g.node, up);
        setText(table.emptyRow.firstChild, 'no guest');
        table.update(guests);
        setText(state, problems.length ? '' : `${plural(guests.length, 'guest')} as of ${new Date().toLocaleTimeString()}`);
        setText(err, problems.map((p) => p.text).join('\n'));
        table.el.setAttribute('data-action', rec.id);
      } catch (e) {
        if (my !== askSeq) return;
        setText(state, '');
        setText(err, refusal(e));
      }
    };
    ask();
    return el;
  }

  // ----- Audit -------------------------------------------------------------------------------------

  // An outcome `{state, targets: {ok: "cn[1-3]", failed: "cn4"}}` as one line.
  function outcomeText(o) {
    if (o && typeof o === 'object' && o.targets && typeof o.targets === 'object') {
      const parts = Object.entries(o.targets).map(([k, v]) => k + ' ' + v);
      return (o.state ? o.state + ': ' : '') + parts.join(', ');
    }
    return JSON.stringify(o);
  }
  function argsText(a) {
    if (a === null || a === undefined || (typeof a === 'object' && !Object.keys(a).length)) return '';
    if (typeof a === 'object' && a.task) return taskText(a.task) + (a.nodes ? ' on ' + a.nodes : '');
    return JSON.stringify(a);
  }
  const auditDetail = (r) => [r.reason, r.outcome ? outcomeText(r.outcome) : '', argsText(r.args)].filter((x) => x).join(' · ');
  const isRefusal = (r) => /\.refused$/.test(r.event) || r.event === 'audit.torn';

  function pageAudit() {
    const tok = tokenBox('the audit log is shown to token holders only');
    const limit = h('select', { id: 'audit-limit' }, [100, 500, 1000, 5000].map((n) => h('option', { value: n }, 'last ' + n)));
    limit.value = '500';
    const filter = h('input', { class: 'mono', id: 'audit-filter', size: 30, placeholder: 'filter: who, event, action, nodes', spellcheck: 'false' });
    const count = h('span', { class: 'muted', id: 'audit-count' });
    const verifyBtn = h('button', { type: 'button', id: 'audit-verify' }, 'Verify chain');
    const verifyOut = h('div', { id: 'audit-verify-result', role: 'status' });
    const err = errorBox('audit-error');
    const prompt = h('p', { class: 'warn-text', id: 'audit-needs-token' }, 'The audit log needs a token: paste one above (the admin token is in <state-dir>/admin-token).');
    const table = new Table([
      { label: 'Seq', num: true, sort: (r) => r.seq, text: (r) => r.seq },
      { label: 'Time (local)', sort: (r) => r.time_ms, text: (r) => msWhen(r.time_ms) },
      { label: 'Who', sort: (r) => r.who, text: (r) => r.who },
      { label: 'From', sort: (r) => r.peer, text: (r) => r.peer },
      {
        label: 'Event', sort: (r) => r.event,
        cell: (td, r) => { setText(td, r.event); const cls = 'mono' + (isRefusal(r) ? ' n-bad' : ''); if (td.className !== cls) td.className = cls; },
      },
      {
        label: 'Action', cell: (td, r) => {
          if (!r.action) { if (td.textContent !== '–') replace(td, '–'); return; }
          let a = td.firstChild;
          if (!a || a.nodeName !== 'A') { clear(td); a = td.appendChild(h('a', { class: 'mono' })); }
          if (a.getAttribute('href') !== actionHref(r.action)) a.setAttribute('href', actionHref(r.action));
          setText(a, r.action);
        },
      },
      { label: 'Targets', name: true, sort: (r) => r.targets, text: (r) => r.targets || '–' },
      { label: 'Mode', text: (r) => (r.for_real === undefined || r.for_real === null ? '' : modeText(r.for_real)), pill: (r) => (r.for_real === undefined || r.for_real === null ? 'none' : modePill(r.for_real)) },
      { label: 'Reason / outcome', name: true, text: auditDetail },
    ], (r) => String(r.seq), { id: 'audit-table', sortCol: 0, sortDesc: true, wrap: true, empty: 'no line' });
    const tablePanel = panel('Audit log (newest first)', table.el);
    replace(view,
      h('h1', null, 'Audit', h('span', { class: 'sub' }, 'every request that changes something, allowed or refused, in a hash chain')),
      panel('Token', tok.el), h('p'),
      prompt,
      h('div', { class: 'toolbar' }, limit, filter, count, verifyBtn),
      verifyOut, err.el,
      tablePanel);
    let last = [];
    // A refused read is itself audited: after one, wait for another token instead of polling.
    let refusedFor = null;
    const show = () => {
      const f = filter.value.trim().toLowerCase();
      const rows = f ? last.filter((r) => [r.who, r.peer, r.event, r.action, r.targets, auditDetail(r)]
        .some((x) => x && String(x).toLowerCase().includes(f))) : last;
      table.update(rows);
      setText(count, `${rows.length} line${rows.length === 1 ? '' : 's'}${f ? ' shown' : ''}`);
    };
    const refresh = async () => {
      const have = !!token();
      prompt.hidden = have;
      tablePanel.hidden = !have;
      if (!have || refusedFor === token()) return;
      try {
        last = await api('/audit?limit=' + enc(limit.value), { headers: bearer() });
        err.show(null);
        show();
      } catch (e) {
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) { refusedFor = token(); err.show(e); return; }
        throw e;
      }
    };
    const now = () => refresh().catch((e) => err.show(e));
    filter.addEventListener('input', show);
    limit.addEventListener('change', now);
    tok.onChange(() => { refusedFor = null; err.show(null); setText(verifyOut, ''); now(); });
    verifyBtn.addEventListener('click', async () => {
      if (!token()) { setText(verifyOut, 'no token: paste one above first'); verifyOut.className = 'error'; tok.focus(); return; }
      setText(verifyOut, 'verifying the whole chain…');
      verifyOut.className = 'note';
      try {
        const v = await api('/audit/verify', { headers: bearer() });
        if (v.ok) {
          setText(verifyOut, `chain verified: ${v.lines} line${v.lines === 1 ? '' : 's'}, every link intact` + (v.last_hash ? ` (last hash ${String(v.last_hash).slice(0, 16)}…)` : ''));
          verifyOut.className = 'verdict ok-text';
        } else {
          setText(verifyOut, `CHAIN BROKEN at line ${v.line}: ${v.error}`);
          verifyOut.className = 'verdict error';
        }
      } catch (e) {
        setText(verifyOut, refusal(e));
        verifyOut.className = 'verdict error';
      }
    });
    every(5000, refresh);
  }

  // ----- Routing ---------------------------------------------------------------------------------

  function route() {
    while (leaving.length) leaving.pop()();
    gen++;
    const hash = location.hash.replace(/^#\/?/, '');
    const [page, ...rest] = hash.split('/');
    let arg = null;
    try { arg = rest.length ? decodeURIComponent(rest.join('/')) : null; } catch (_) { arg = null; }
    const nav = { '': 'overview', nodes: 'nodes', node: 'nodes', jobs: 'jobs', job: 'jobs', profile: 'jobs', topology: 'topology', alarms: 'alarms',
      actions: 'actions', action: 'actions', power: 'power', cloud: 'cloud', guests: 'guests', audit: 'audit' }[page] || 'overview';
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('data-page') === nav);
    window.scrollTo(0, 0);
    if (page === 'nodes') pageNodes();
    else if (page === 'node' && arg !== null) pageNode(arg);
    else if (page === 'jobs') pageJobs();
    else if (page === 'job' && arg !== null) pageJob(arg, false);
    else if (page === 'profile' && arg !== null) pageJob(arg, true);
    else if (page === 'topology') pageTopology();
    else if (page === 'alarms') pageAlarms();
    else if (page === 'actions') pageActions();
    else if (page === 'action' && arg !== null) pageAction(arg);
    else if (page === 'power') pagePower();
    else if (page === 'cloud') pageCloud();
    else if (page === 'guests') pageGuests(arg);
    else if (page === 'audit') pageAudit();
    else pageOverview();
    document.title = 'banyan · ' + (arg || nav);
  }
  window.addEventListener('hashchange', route);
  route();
})();
