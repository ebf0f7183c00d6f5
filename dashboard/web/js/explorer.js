// Topic explorer (admins): a live tree of the topics flowing through the
// dashboard's own MQTT connection (live.js, the admin's session and
// rights), with message rates, the last payload (always as text, never as
// HTML) and the retained flag; watch any filter; publish a test message;
// browse and clear retained messages (an empty retained payload).
//
// It stays light: at most MAX_TOPICS topics are kept (later ones are
// counted, not shown), payloads are kept up to MAX_TEXT characters, the
// tree is redrawn at most twice a second and shows at most MAX_ROWS rows.

import { h, fill, frame, fmtNum, fmtAgo } from './util.js';
import { live } from './live.js';

const MAX_TOPICS = 5000;
const MAX_TEXT = 4096;
const MAX_ROWS = 1000;
const PREVIEW = 80;

// Topic is one topic's last message and its rate.
class Topic {
  constructor(name) {
    this.name = name;
    this.count = 0;
    this.counted = 0; // count at the last rate tick
    this.rate = 0;    // messages per second, smoothed
    this.text = '';
    this.bytes = 0;
    this.qos = 0;
    this.retained = false;
    this.at = 0;
  }
}

// indent is a spacer for a tree level (a style property, not a style
// attribute: the page's CSP allows no inline styles).
function indent(depth) {
  const s = h('span', { class: 'indent' });
  s.style.paddingLeft = (depth * 1.1) + 'rem';
  return s;
}

export function explorerView(main) {
  const topics = new Map(); // name -> Topic
  let dropped = 0;          // messages of topics beyond MAX_TOPICS
  let total = 0, totalCounted = 0, totalRate = 0;
  const open = new Set();   // nodes expanded by hand
  const shut = new Set();   // nodes collapsed by hand
  let selected = '';
  let filter = '#';
  let off = null;

  // Controls.
  const watchInput = h('input', { id: 'watch-filter', value: filter, spellcheck: false, 'aria-label': 'Topic filter' });
  const watchBtn = h('button', { type: 'submit', id: 'watch-submit' }, 'Watch');
  const clearBtn = h('button', { type: 'button', class: 'ghost', id: 'explorer-reset' }, 'Forget all');
  const watchErr = h('p', { class: 'error', role: 'alert', id: 'watch-error' });
  const stats = h('p', { class: 'muted small', id: 'explorer-stats' });
  const tree = h('tbody', { id: 'explorer-rows' });
  const detail = h('div', { id: 'explorer-detail' });
  const retainedRows = h('tbody', { id: 'retained-rows' });

  const pubTopic = h('input', { id: 'pub-topic', required: true, spellcheck: false });
  const pubPayload = h('textarea', { id: 'pub-payload', rows: 4, spellcheck: false });
  const pubQos = h('select', { id: 'pub-qos' }, [0, 1, 2].map((q) => h('option', { value: String(q) }, 'QoS ' + q)));
  const pubRetain = h('input', { id: 'pub-retain', type: 'checkbox' });
  const pubBtn = h('button', { type: 'submit', id: 'pub-submit' }, 'Publish');
  const pubStatus = h('p', { class: 'small', role: 'status', id: 'pub-status' });

  // publish sends one message over the dashboard's connection and reports
  // the broker's answer (QoS 1/2: its PUBACK/PUBREC reason).
  const publish = (topic, payload, qos, retain) => new Promise((resolve, reject) => {
    const c = live.client;
    if (!c || !c.connected) { reject(new Error('Not connected to the broker.')); return; }
    c.publish(topic, payload, { qos, retain }, (err) => (err ? reject(err) : resolve()));
  });

  const clearRetained = async (name) => {
    pubStatus.textContent = '';
    try {
      await publish(name, '', 1, true);
      const t = topics.get(name);
      if (t) { t.retained = false; t.text = ''; t.bytes = 0; }
      pubStatus.textContent = 'Cleared the retained message of ' + name + '.';
      draw();
    } catch (e) { pubStatus.textContent = 'Not cleared: ' + e.message; }
  };

  const onMessage = (topic, text, packet) => {
    total++;
    let t = topics.get(topic);
    if (!t) {
      if (topics.size >= MAX_TOPICS) { dropped++; return; }
      t = new Topic(topic);
      topics.set(topic, t);
    }
    t.count++;
    t.at = Date.now();
    t.qos = packet ? packet.qos : 0;
    t.bytes = packet && packet.payload ? packet.payload.length : text.length;
    t.text = text.length > MAX_TEXT ? text.slice(0, MAX_TEXT) : text;
    // live.js subscribes with retain-as-published: the flag is the
    // publisher's; an empty retained payload clears the topic's.
    if (packet && packet.retain) t.retained = t.bytes > 0;
    draw();
  };

  const watch = (f) => {
    if (off) off();
    off = null;
    filter = f;
    off = live.on(filter, onMessage);
  };

  // The tree: nodes by level, built from the topic names at each redraw.
  const build = () => {
    const root = { children: new Map() };
    for (const t of topics.values()) {
      let node = root;
      const parts = t.name.split('/');
      let path = '';
      for (let i = 0; i < parts.length; i++) {
        path = i ? path + '/' + parts[i] : parts[i];
        let child = node.children.get(parts[i]);
        if (!child) { child = { level: parts[i], path, depth: i, children: new Map(), topic: null, n: 0 }; node.children.set(parts[i], child); }
        child.n++;
        node = child;
      }
      node.topic = t;
    }
    return root;
  };

  const expanded = (node) => open.has(node.path) || (node.depth < 2 && !shut.has(node.path));

  const row = (node) => {
    const t = node.topic;
    const hasKids = node.children.size > 0;
    const toggle = hasKids
      ? h('button', { class: 'ghost small toggle', type: 'button', 'aria-label': 'expand', onclick: (ev) => {
        ev.stopPropagation();
        if (expanded(node)) { open.delete(node.path); shut.add(node.path); } else { shut.delete(node.path); open.add(node.path); }
        draw();
      } }, expanded(node) ? '▾' : '▸')
      : h('span', { class: 'toggle' });
    const attrs = { class: 'link' + (t && t.name === selected ? ' selected' : ''), dataset: { path: node.path } };
    if (t) attrs.dataset.topic = t.name;
    attrs.onclick = () => { if (t) { selected = t.name; pubTopic.value = t.name; draw(); } };
    return h('tr', attrs,
      h('td', { class: 'mono' }, indent(node.depth), toggle, ' ', node.level || '(empty)',
        hasKids ? h('span', { class: 'muted small', text: ` (${node.n})` }) : null),
      h('td', { class: 'num', text: t ? fmtNum(t.count) : '' }),
      h('td', { class: 'num', text: t ? fmtNum(t.rate, 1) : '' }),
      h('td', {}, t && t.retained ? h('span', { class: 'pill ok retained', text: 'retained' }) : null),
      h('td', { class: 'mono small preview', text: t ? (t.text.length > PREVIEW ? t.text.slice(0, PREVIEW) + '…' : t.text) : '' }));
  };

  const drawDetail = () => {
    const t = topics.get(selected);
    if (!t) { fill(detail, h('p', { class: 'muted small', text: 'Select a topic to see its last message.' })); return; }
    fill(detail,
      h('h3', { class: 'mono', id: 'detail-topic', text: t.name }),
      h('p', { class: 'muted small' }, `${fmtNum(t.bytes)} bytes · QoS ${t.qos} · ${fmtAgo(t.at)} · ${fmtNum(t.count)} messages`,
        t.retained ? h('span', {}, ' · ', h('span', { class: 'pill ok', text: 'retained' })) : null),
      h('pre', { id: 'detail-payload', text: t.text + (t.bytes > t.text.length && t.text.length >= MAX_TEXT ? '\n…' : '') }),
      t.retained ? h('p', {}, h('button', { class: 'danger small', type: 'button', id: 'detail-clear', onclick: () => clearRetained(t.name) }, 'Clear retained message')) : null);
  };

  const render = () => {
    const rows = [];
    const walk = (node) => {
      for (const child of [...node.children.values()].sort((a, b) => a.level.localeCompare(b.level))) {
        if (rows.length >= MAX_ROWS) return;
        rows.push(row(child));
        if (child.children.size && expanded(child)) walk(child);
      }
    };
    walk(build());
    if (rows.length >= MAX_ROWS) rows.push(h('tr', {}, h('td', { colSpan: 5, class: 'muted small', text: `Only the first ${MAX_ROWS} rows are shown: collapse nodes or watch a narrower filter.` })));
    if (!rows.length) rows.push(h('tr', {}, h('td', { colSpan: 5, class: 'muted small', text: `Nothing yet on ${filter}.` })));
    fill(tree, rows);
    stats.textContent = `${fmtNum(topics.size)} topics · ${fmtNum(total)} messages · ${fmtNum(totalRate, 1)} msg/s on ${filter}` +
      (dropped ? ` · ${fmtNum(dropped)} messages of topics beyond the first ${MAX_TOPICS} not shown` : '');
    const kept = [...topics.values()].filter((t) => t.retained).sort((a, b) => a.name.localeCompare(b.name));
    fill(retainedRows, kept.length ? kept.slice(0, MAX_ROWS).map((t) => h('tr', { dataset: { topic: t.name } },
      h('td', { class: 'mono', text: t.name }),
      h('td', { class: 'mono small preview', text: t.text.length > PREVIEW ? t.text.slice(0, PREVIEW) + '…' : t.text }),
      h('td', {}, h('button', { class: 'danger small clear', type: 'button', onclick: () => clearRetained(t.name) }, 'Clear'))))
      : h('tr', {}, h('td', { colSpan: 3, class: 'muted small', text: 'No retained messages seen on this filter.' })));
    drawDetail();
  };
  const draw = frame(render, 500);

  // Rates: messages per second over the last second, smoothed.
  const tick = setInterval(() => {
    for (const t of topics.values()) {
      const n = t.count - t.counted;
      t.counted = t.count;
      t.rate = t.rate * 0.6 + n * 0.4;
      if (t.rate < 0.01) t.rate = 0;
    }
    totalRate = totalRate * 0.6 + (total - totalCounted) * 0.4;
    totalCounted = total;
    draw();
  }, 1000);

  const watchForm = h('form', { class: 'row', id: 'watch-form' },
    h('label', {}, 'Watch topic filter (+ and # wildcards; $SYS/# for the broker)', watchInput), watchBtn, clearBtn);
  watchForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = watchInput.value.trim();
    watchErr.textContent = '';
    const bad = !f || f.split('/').some((p, i, a) => (p.includes('#') && (p !== '#' || i !== a.length - 1)) || (p.includes('+') && p !== '+'));
    if (bad) { watchErr.textContent = 'Not a topic filter: "#" only as the last level, "+" only as a whole level.'; return; }
    topics.clear(); dropped = 0; total = 0; totalCounted = 0; selected = '';
    watch(f);
    draw();
  });
  clearBtn.addEventListener('click', () => { topics.clear(); dropped = 0; selected = ''; draw(); });

  const pubForm = h('form', { class: 'form', id: 'pub-form' },
    h('h2', { text: 'Publish a test message' }),
    h('label', {}, 'Topic', pubTopic),
    h('label', {}, 'Payload (text)', pubPayload),
    h('div', { class: 'row' }, h('label', {}, 'QoS', pubQos),
      h('label', { class: 'check' }, h('span', {}, pubRetain, ' Retain')), pubBtn),
    pubStatus);
  pubForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    pubStatus.textContent = '';
    const topic = pubTopic.value;
    if (!topic || /[+#]/.test(topic)) { pubStatus.textContent = 'A topic name has no wildcards.'; return; }
    pubBtn.disabled = true;
    try {
      await publish(topic, pubPayload.value, Number(pubQos.value), pubRetain.checked);
      pubStatus.textContent = 'Published to ' + topic + '.';
    } catch (e) {
      pubStatus.textContent = 'Refused: ' + e.message;
    } finally { pubBtn.disabled = false; }
  });

  main.append(
    h('div', { class: 'head' }, h('div', {}, h('h1', { text: 'Topic explorer' }),
      h('p', { class: 'muted small', text: 'The topics flowing through the broker, live, over this page\'s own MQTT connection with your rights.' }))),
    h('section', { class: 'panel' }, watchForm, watchErr, stats),
    h('div', { class: 'grid explorer' },
      h('section', { class: 'panel' }, h('h2', { text: 'Topics' }),
        h('div', { class: 'table-wrap' }, h('table', { id: 'explorer-tree' },
          h('thead', {}, h('tr', {}, ['Topic', 'Messages', 'Msg/s', 'Retained', 'Last payload'].map((c) => h('th', { text: c })))), tree))),
      h('div', { class: 'stack' },
        h('section', { class: 'panel' }, h('h2', { text: 'Last message' }), detail),
        h('section', { class: 'panel' }, pubForm),
        h('section', { class: 'panel' }, h('h2', { text: 'Retained messages' }),
          h('div', { class: 'table-wrap' }, h('table', { id: 'retained-table' }, retainedRows))))));
  watch(filter);
  draw();
  return () => { clearInterval(tick); draw.cancel(); if (off) off(); };
}
