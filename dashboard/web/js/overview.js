// The fleet overview: devices online/offline/total (registry + live
// status), messages per second in and out ($SYS), connections by
// transport (GET /broker), and the broker's own figures.

import { h, fill, frame, fmtNum, fmtDuration, fmtBytes } from './util.js';
import { get } from './api.js';
import { fleet } from './fleet.js';
import { sys } from './sys.js';
import { timeChart } from './chart.js';

const TRANSPORTS = ['tcp', 'tls', 'ws', 'wss'];

export function overviewView(main) {
  const stat = (label, id, cls = '') => h('div', { class: 'panel stat ' + cls },
    h('div', { class: 'label', text: label }), h('div', { class: 'value', id, text: '—' }));
  const chartEl = h('div', { class: 'chart', id: 'rate-chart' });
  const bars = h('div', { class: 'bars', id: 'transports' });
  const barsNote = h('p', { class: 'muted small' });
  const info = h('dl', { class: 'kv', id: 'broker-info' });
  main.append(
    h('div', { class: 'head' }, h('div', {}, h('h1', { text: 'Fleet overview' }),
      h('p', { class: 'muted small', text: 'Live from the broker: device status and $SYS statistics.' }))),
    h('div', { class: 'grid cards' },
      stat('Online', 'n-online', 'ok'), stat('Offline', 'n-offline'), stat('Devices', 'n-total'),
      stat('Messages in', 'rate-in'), stat('Messages out', 'rate-out')),
    h('div', { class: 'grid two' },
      h('section', { class: 'panel' }, h('h2', { text: 'Messages per second' }), chartEl),
      h('section', { class: 'panel' }, h('h2', { text: 'Connections by transport' }), bars, barsNote)),
    h('section', { class: 'panel' }, h('h2', { text: 'Broker' }), info));

  const $ = (id) => main.querySelector('#' + id);
  let conns = null; // from GET /broker, when it says
  let queueStore = null; // the session queues' use of their bound, from GET /broker
  let nodes = null; // the cluster's nodes, from GET /broker; null when alone

  const drawFleet = frame(() => {
    const c = fleet.counts();
    $('n-online').textContent = fleet.loaded ? fmtNum(c.online) : '—';
    $('n-offline').textContent = fleet.loaded ? fmtNum(c.offline) : '—';
    fill($('n-total'), fleet.loaded ? fmtNum(c.total) : '—', c.disabled ? h('small', { text: ` · ${c.disabled} disabled` }) : null);
    drawTransports(c.transports);
  }, 250);

  const drawTransports = (deviceTransports) => {
    const byT = conns || deviceTransports;
    const max = Math.max(1, ...TRANSPORTS.map((t) => byT[t] || 0));
    fill(bars, TRANSPORTS.map((t) => {
      const fillEl = h('div', { class: 'fill' });
      fillEl.style.width = ((byT[t] || 0) / max * 100) + '%';
      return h('div', { class: 'bar', dataset: { transport: t } },
        h('span', { class: 'mono', text: t }), h('div', { class: 'track' }, fillEl), h('span', { text: fmtNum(byT[t] || 0) }));
    }));
    barsNote.textContent = conns ? 'All MQTT connections, devices and people.' : 'Devices online, by the transport they connected over.';
  };

  const chart = timeChart(chartEl, [{ label: 'in', color: '#2563eb' }, { label: 'out', color: '#16a34a' }], [[], [], []], { window: 300 });
  const drawSys = frame(() => {
    const v = sys.values;
    const rate = (r) => r == null ? '—' : fmtNum(Math.round(r * 10) / 10, 1);
    fill($('rate-in'), rate(sys.last.in), h('small', { text: ' /s' }));
    fill($('rate-out'), rate(sys.last.out), h('small', { text: ' /s' }));
    chart.set([sys.rate.t.slice(), sys.rate.in.slice(), sys.rate.out.slice()]);
    const row = (k, val) => [h('dt', { text: k }), h('dd', { text: val })];
    fill(info,
      row('Version', v.version ?? '—'),
      row('Uptime', typeof v.uptime === 'number' ? fmtDuration(v.uptime) : '—'),
      row('Clients connected', fmtNum(v['clients/connected'])),
      row('Subscriptions', fmtNum(v.subscriptions)),
      row('Retained messages', fmtNum(v.retained)),
      row('In flight', fmtNum(v['messages/inflight'])),
      row('Dropped messages', fmtNum(v['messages/dropped'])),
      row('Bytes in / out', fmtBytes(v['load/bytes/received']) + ' / ' + fmtBytes(v['load/bytes/sent'])),
      row('Broker memory', fmtBytes(v['system/memory'])),
      queueStore ? queueRow(queueStore) : null,
      nodes ? nodesRow(nodes) : null);
  }, 500);

  // GET /broker, if it reports connections by transport.
  const poll = async () => {
    try {
      const b = await get('/broker');
      conns = transportsOf(b);
      queueStore = b && b.queue_store_limit_bytes ? b : null;
      nodes = b && Array.isArray(b.nodes) && b.nodes.length ? b.nodes : null;
      drawFleet();
      drawSys();
    } catch { conns = null; }
  };
  poll();
  const timer = setInterval(poll, 5000);

  sys.start();
  const offSys = sys.onChange(drawSys);
  const offFleet = fleet.onChange(drawFleet);
  drawFleet();
  drawSys();
  return () => { clearInterval(timer); offSys(); offFleet(); drawFleet.cancel(); drawSys.cancel(); chart.destroy(); };
}

// queueRow shows how full the persistent sessions' queues are on disk,
// as a warning above 90 % of mqtt.max_queue_store_bytes.
function queueRow(b) {
  const pct = Math.floor(b.queue_store_bytes * 100 / b.queue_store_limit_bytes);
  const near = b.queue_store_bytes * 10 > b.queue_store_limit_bytes * 9;
  const text = `${fmtBytes(b.queue_store_bytes)} of ${fmtBytes(b.queue_store_limit_bytes)} (${pct} %)` +
    (near ? ' — nearly full: messages for offline sessions will soon be refused' : '');
  return [h('dt', { text: 'Session queues' }), h('dd', { text, class: near ? 'warn-text' : '', dataset: { queueStore: near ? 'near' : 'ok' } })];
}

// nodesRow lists the cluster's nodes and their load (docs/cluster.md).
function nodesRow(nodes) {
  const text = nodes.map((n) => `${n.name}${n.self ? ' (this node)' : ''}: ${fmtNum(n.clients)} clients, ` +
    `${fmtNum(Math.round(n.messages_per_second * 10) / 10, 1)} msg/s`).join(' · ');
  return [h('dt', { text: 'Cluster nodes' }), h('dd', { text, dataset: { nodes: String(nodes.length) } })];
}

// transportsOf finds {tcp: n, ...} in the /broker statistics, whichever
// shape they take: an object of numbers, or a list of listeners.
function transportsOf(b) {
  const src = b && (b.connections_by_transport || b.transports || b.listeners || b.connections);
  if (!src || typeof src !== 'object') return null;
  const out = {};
  if (Array.isArray(src)) {
    for (const l of src) {
      const t = l.transport || l.id || l.protocol;
      const n = l.connections ?? l.open ?? l.clients;
      if (t && typeof n === 'number') out[t] = (out[t] || 0) + n;
    }
  } else {
    for (const [t, v] of Object.entries(src)) {
      const n = typeof v === 'number' ? v : v && (v.connections ?? v.open ?? v.clients);
      if (typeof n === 'number') out[t] = n;
    }
  }
  return Object.keys(out).length ? out : null;
}
