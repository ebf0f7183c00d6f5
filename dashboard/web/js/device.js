// The device page: status and connection, latest values, a live chart per
// numeric metric (the last hour, day, week or month from the telemetry API
// in buckets, then streamed from devices/{id}/telemetry), the command
// console and the twin.
//
// Live messages are shown as the broker routes them, also those the
// server refuses to store (too large, too many metrics), so the page
// bounds what it keeps whatever a device publishes: at most MAX_METRICS
// metric names (the most the server keeps for a device), names and values
// shown up to MAX_TEXT characters (the longest string value it stores),
// charts for at most MAX_CHARTS metrics.

import { h, fill, frame, fmtNum, fmtTime, fmtAgo, statusPill } from './util.js';
import { get, can, enc } from './api.js';
import { live } from './live.js';
import { fleet } from './fleet.js';
import { timeChart } from './chart.js';
import { commandConsole } from './commands.js';
import { twinPanel } from './twin.js';
import { deviceActions } from './admin.js';
import { grantsPanel } from './grants.js';

// The chart ranges the page offers, in seconds, with the bucket step each
// asks for: whole minutes read the per-minute rollups, whole hours the
// hourly ones (a month is 720 buckets, however often the device reports).
const RANGES = [
  { label: '1 h', span: 3600, step: '1m' },
  { label: '24 h', span: 86400, step: '5m' },
  { label: '7 d', span: 7 * 86400, step: '1h' },
  { label: '30 d', span: 30 * 86400, step: '1h' },
];
const MAX_POINTS = 4000;
const MAX_METRICS = 1024; // devices.MaxDeviceMetrics
const MAX_TEXT = 256;     // devices.MaxMetricString
const MAX_CHARTS = 64;
const NOT_STORED_EVERY = 30000;

export function deviceView(main, [id]) {
  const cleanups = [];
  let dev = null;
  const title = h('h1', { text: id });
  const sub = h('div', { class: 'muted small mono', text: id });
  const pill = h('span', { id: 'device-status' });
  const details = h('dl', { class: 'kv', id: 'device-details' });
  const values = h('div', { class: 'values', id: 'latest-values' }, h('span', { class: 'muted', text: 'No telemetry yet.' }));
  const charts = h('div', { class: 'charts', id: 'charts' });
  // Why the history is missing (an error), and what the page leaves out.
  const historyErr = h('p', { class: 'error', role: 'alert', id: 'history-error', hidden: true });
  const valuesNote = h('p', { class: 'muted small', id: 'values-note', hidden: true });
  const chartsNote = h('p', { class: 'muted small', id: 'charts-note', hidden: true });
  const actions = h('div', { class: 'actions' });
  let range = RANGES[0];
  let loading = 0; // the latest history request; an older one's answer is dropped
  const rangeButtons = RANGES.map((r) => h('button', {
    class: 'ghost small', type: 'button', dataset: { range: r.label }, 'aria-pressed': r === range ? 'true' : 'false',
    onclick: () => setRange(r),
  }, r.label));
  const rangeBar = h('div', { class: 'row chart-ranges', id: 'chart-range', role: 'group', 'aria-label': 'Chart range' }, rangeButtons);
  main.append(
    h('p', { class: 'small' }, h('a', { href: '#/devices', text: '← Devices' })),
    h('div', { class: 'head' }, h('div', {}, h('div', { class: 'row' }, title, pill), sub), actions),
    h('div', { class: 'grid two' },
      h('section', { class: 'panel' }, h('h2', { text: 'Connection' }), details),
      h('section', { class: 'panel' }, h('h2', { text: 'Latest values' }), values, valuesNote)),
    rangeBar,
    historyErr,
    chartsNote,
    charts);

  const drawDetails = () => {
    if (!dev) return;
    title.textContent = dev.name || dev.id;
    sub.hidden = !dev.name || dev.name === dev.id;
    fill(pill, statusPill(dev.online, dev.enabled));
    const row = (k, v) => [h('dt', { text: k }), h('dd', {}, v ?? '—')];
    fill(details,
      row('Status', dev.online ? 'online since ' + fmtTime(dev.last_seen) : 'offline, last seen ' + fmtAgo(dev.last_seen)),
      row('Transport', dev.transport || '—'),
      dev.remote_addr ? row('Address', h('span', { class: 'mono', text: dev.remote_addr })) : null,
      dev.protocol_version ? row('MQTT version', { 3: '3.1', 4: '3.1.1', 5: '5.0' }[dev.protocol_version] || String(dev.protocol_version)) : null,
      row('Type', dev.type || '—'),
      row('Labels', Object.keys(dev.labels || {}).length ? Object.entries(dev.labels).map(([k, v]) => h('span', { class: 'label-tag', text: v ? `${k}=${v}` : k })) : '—'),
      row('Enabled', dev.enabled === false ? 'no — connections are refused' : 'yes'),
      dev.created_at ? row('Registered', fmtTime(dev.created_at)) : null,
      notStoredRow(dev.telemetry_not_stored));
  };
  // What telemetry.device_values_rate kept out of the history (the
  // server counts it per node, since the node started): shown once the
  // device went over it.
  const notStoredRow = (ns) => {
    if (!ns || !(ns.samples > 0)) return null;
    const n = Number(ns.samples).toLocaleString();
    const text = `${n} sample${ns.samples === 1 ? '' : 's'} over the stored-values rate (telemetry.device_values_rate): routed, not in the history; the last ${fmtAgo(ns.last_at)}`;
    const where = `counted ${ns.node ? 'by node ' + ns.node + ' ' : ''}since ${fmtTime(ns.since)}`;
    return [h('dt', { text: 'Not stored' }),
      h('dd', { id: 'telemetry-not-stored' }, h('span', { class: 'warn-text', text }), h('div', { class: 'muted small', text: where }))];
  };

  // Latest values and charts.
  const latest = new Map();    // metric -> value (a Map: any name is a key, __proto__ too)
  const series = new Map();    // metric -> {t: [], v: [], chart, el}
  const valueEls = new Map();
  // setLatest keeps a metric's value; false when the metric is left out.
  const setLatest = (name, v) => {
    if (name.length > MAX_TEXT || (!latest.has(name) && latest.size >= MAX_METRICS)) {
      if (valuesNote.hidden) {
        valuesNote.textContent = `Some metrics are not shown: this page shows at most ${MAX_METRICS.toLocaleString()} metrics, with names of up to ${MAX_TEXT} characters.`;
        valuesNote.hidden = false;
      }
      return false;
    }
    latest.set(name, typeof v === 'string' || (v && typeof v === 'object') ? clip(fmtNum(v)) : v);
    return true;
  };
  const drawValues = frame(() => {
    const keys = [...latest.keys()].sort();
    if (!keys.length) return;
    if (valueEls.size !== keys.length || keys.some((k) => !valueEls.has(k))) {
      valueEls.clear();
      fill(values, keys.map((k) => {
        const v = h('div', { class: 'v' });
        valueEls.set(k, v);
        return h('div', { class: 'metric', dataset: { metric: k } }, h('div', { class: 'k', text: k }), v);
      }));
    }
    for (const k of keys) {
      const txt = fmtNum(latest.get(k));
      const el = valueEls.get(k);
      if (el.textContent !== txt) el.textContent = txt;
    }
  }, 200);

  const seriesFor = (metric) => {
    let s = series.get(metric);
    if (s) return s;
    if (series.size >= MAX_CHARTS) {
      if (chartsNote.hidden) {
        chartsNote.textContent = `Charts for the first ${MAX_CHARTS} metrics; the others are under Latest values.`;
        chartsNote.hidden = false;
      }
      return null;
    }
    const el = h('div', { class: 'chart-body' });
    const last = h('span', { class: 'muted small' });
    const panel = h('section', { class: 'panel chart', dataset: { metric } }, h('h3', {}, h('span', { text: metric }), last), el);
    // Keep the charts in metric order.
    const after = [...charts.children].find((c) => c.dataset.metric > metric);
    charts.insertBefore(panel, after || null);
    s = { t: [], v: [], el, last, chart: null };
    s.chart = timeChart(el, [{ label: metric }], [s.t, s.v]);
    series.set(metric, s);
    return s;
  };
  const push = (metric, t, v) => {
    const s = seriesFor(metric);
    if (!s) return;
    if (s.t.length && t < s.t[s.t.length - 1]) return; // late point: the history has it
    s.t.push(t); s.v.push(v);
    const cut = t - range.span;
    let drop = 0;
    while (drop < s.t.length && (s.t[drop] < cut || s.t.length - drop > MAX_POINTS)) drop++;
    if (drop) { s.t.splice(0, drop); s.v.splice(0, drop); }
    s.last.textContent = fmtNum(v);
    s.chart.set([s.t, s.v]);
  };

  // A JSON object (nested objects flattened with dots, as the server
  // stores them) on devices/{id}/telemetry, or a bare number on
  // devices/{id}/telemetry/{metric}.
  const onTelemetry = (topic, text) => {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    const metric = topic.split('/').slice(3).join('/');
    if (metric && typeof m === 'number') m = { [metric]: m };
    if (!m || typeof m !== 'object' || Array.isArray(m)) return;
    const t = tsOf(m.ts);
    const put = (prefix, obj) => {
      for (const [k, v] of Object.entries(obj)) {
        if (!prefix && k === 'ts') continue;
        const name = prefix ? prefix + '.' + k : k;
        if (v && typeof v === 'object' && !Array.isArray(v)) { put(name, v); continue; }
        if (setLatest(name, v) && typeof v === 'number' && isFinite(v)) push(name, t, v);
      }
    };
    put('', m);
    drawValues();
  };
  const onStatus = (_topic, text) => {
    try {
      const st = JSON.parse(text);
      if (!dev) return;
      dev.online = !!st.online;
      if (st.transport) dev.transport = st.transport;
      if (st.since) dev.last_seen = st.since;
      drawDetails();
    } catch { /* ignore a malformed status */ }
  };

  const load = async () => {
    try {
      dev = await get('/devices/' + enc(id));
    } catch (e) {
      if (closed) return false;
      fill(main, h('p', { class: 'small' }, h('a', { href: '#/devices', text: '← Devices' })),
        h('div', { class: 'panel' }, h('h1', { text: id }), h('p', { class: 'error', text: e.status === 404 ? 'No such device.' : e.message })));
      return false;
    }
    fleet.put(dev);
    drawDetails();
    if (can('admin')) fill(actions, deviceActions(dev, (d) => { dev = d; drawDetails(); }));
    for (const [k, v] of Object.entries(dev.last_values || {})) setLatest(k, v);
    drawValues();
    return true;
  };

  // setRange shows another range: the charts are emptied and refilled from
  // the history; live points keep coming meanwhile.
  const setRange = async (r) => {
    range = r;
    for (const b of rangeButtons) b.setAttribute('aria-pressed', b.dataset.range === r.label ? 'true' : 'false');
    const mine = ++loading;
    const fresh = [];
    const err = await loadHistory(id, (metric, t, v) => fresh.push([metric, t, v]), r);
    if (closed || mine !== loading) return;
    showHistoryError(err);
    for (const s of series.values()) { s.t.length = 0; s.v.length = 0; }
    for (const [metric, t, v] of fresh) push(metric, t, v);
    for (const s of series.values()) s.chart.set([s.t, s.v]);
  };

  // showHistoryError says why the charts lack the range's history, or
  // nothing once a load succeeds.
  const showHistoryError = (e) => {
    historyErr.textContent = e ? 'The history could not be loaded: ' + e.message : '';
    historyErr.hidden = !e;
  };

  let closed = false; // the view was left while loading
  (async () => {
    if (!(await load()) || closed) return;
    const mine = ++loading;
    const err = await loadHistory(id, push, range);
    if (closed) return;
    if (mine === loading) showHistoryError(err);
    // Then stream; points older than the last history point are skipped.
    cleanups.push(live.on(`devices/${id}/telemetry`, onTelemetry));
    cleanups.push(live.on(`devices/${id}/telemetry/+`, onTelemetry));
    cleanups.push(live.on(`devices/${id}/status`, onStatus));
    const cmd = commandConsole(id);
    const twin = twinPanel(id);
    main.append(h('div', { class: 'grid two' }, cmd.el, twin.el));
    main.append(h('div', { class: 'grid two' }, grantsPanel(dev, (d) => { dev = d; drawDetails(); })));
    cleanups.push(cmd.close, twin.close);
  })();
  const ago = setInterval(drawDetails, 15000);
  cleanups.push(() => clearInterval(ago));
  // The count of samples not stored grows while the device is over its
  // rate: read it again every NOT_STORED_EVERY ms (the rest of the page
  // follows the device's status over MQTT).
  const recount = setInterval(async () => {
    if (!dev || document.hidden) return;
    try {
      const d = await get('/devices/' + enc(id));
      if (closed || !dev) return;
      dev.telemetry_not_stored = d.telemetry_not_stored;
      drawDetails();
    } catch { /* the next round tries again */ }
  }, NOT_STORED_EVERY);
  cleanups.push(() => clearInterval(recount));

  return () => {
    closed = true;
    drawValues.cancel();
    for (const f of cleanups) f();
    for (const s of series.values()) s.chart.destroy();
  };
}

// loadHistory fetches the range's buckets (their mean), or raw points when
// the server refuses the step (400), and returns the error that left it
// without either (an ApiError: the server's answer, or the network's), or
// null.
async function loadHistory(id, push, { span, step }) {
  const to = new Date(), from = new Date(to - span * 1000);
  const range = `from=${enc(from.toISOString())}&to=${enc(to.toISOString())}`;
  let r = null, err = null;
  // step as a Go duration, else raw points.
  for (const q of [`${range}&step=${step}`, `${range}&limit=1000`]) {
    try { r = await get(`/devices/${enc(id)}/telemetry?${q}`); err = null; break; } catch (e) { err = e; if (e.status !== 400) break; }
  }
  if (err) return err;
  if (r && r.buckets) {
    const bs = [...r.buckets].sort((a, b) => tsOf(a.ts) - tsOf(b.ts));
    for (const b of bs) for (const [k, v] of Object.entries(b.avg || {})) if (typeof v === 'number') push(k, tsOf(b.ts), v);
  } else if (r && r.points) {
    const pts = [...r.points].sort((a, b) => tsOf(a.ts) - tsOf(b.ts));
    for (const p of pts) for (const [k, v] of Object.entries(p.values || {})) if (typeof v === 'number') push(k, tsOf(p.ts), v);
  }
  return null;
}

// clip shortens text past MAX_TEXT characters, with an ellipsis.
function clip(text) {
  return text.length > MAX_TEXT ? text.slice(0, MAX_TEXT) + '…' : text;
}

// tsOf turns a telemetry timestamp (RFC 3339 or Unix ms) into Unix seconds.
function tsOf(ts) {
  if (typeof ts === 'number') return ts > 1e11 ? ts / 1000 : ts;
  if (typeof ts === 'string') { const t = Date.parse(ts); if (!isNaN(t)) return t / 1000; }
  return Date.now() / 1000;
}
