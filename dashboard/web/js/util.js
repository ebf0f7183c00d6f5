// Small DOM and formatting helpers shared by the views.

// h builds an element: h('a', {href: '#/', class: 'x', onclick: f}, 'text', child).
// Strings become text nodes, so nothing passed here is parsed as HTML.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

// clear empties el and appends children.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// frame returns a function that runs fn at most once per animation frame
// and no more often than every minMs milliseconds, however often it is
// called: a call while fn waits to run adds nothing, and a run always
// follows a call within minMs and a frame, so that calls in a steady
// stream never put it off. When fn returns a promise (a reload), the next
// run waits for it to settle, so that answers never overtake each other.
// Its cancel method stops it for good (a view's cleanup).
export function frame(fn, minMs = 0) {
  let queued = false, busy = false, again = false, last = 0, timer = 0, dead = false;
  const run = async (t) => {
    queued = false; last = t;
    if (dead) return;
    busy = true;
    try { await fn(); } finally {
      busy = false;
      if (again) { again = false; schedule(); }
    }
  };
  const schedule = () => {
    if (dead) return;
    if (busy) { again = true; return; }
    if (queued) return;
    queued = true;
    const wait = last + minMs - performance.now();
    if (wait > 0) timer = setTimeout(() => requestAnimationFrame(run), wait);
    else requestAnimationFrame(run);
  };
  schedule.cancel = () => { dead = true; clearTimeout(timer); };
  return schedule;
}

export function fmtNum(v, digits = 2) {
  if (typeof v !== 'number') return v == null ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v);
  if (Number.isInteger(v)) return v.toLocaleString();
  return v.toLocaleString(undefined, { maximumFractionDigits: digits });
}

export function fmtTime(t) {
  if (!t) return '—';
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

export function fmtAgo(t) {
  if (!t) return '—';
  const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
  if (isNaN(s)) return '—';
  if (s < 5) return 'just now';
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' d ago';
}

export function fmtDuration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

export function fmtBytes(n) {
  if (typeof n !== 'number') return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + ' ' + u[i];
}

// prettyDepth is how deep pretty shows a document: the server bounds
// twins, command params and results at 32 levels, but a record stored
// before it did (a device's result nested 10,000 deep) made
// JSON.stringify overflow the stack, and its indentation grows with the
// square of the depth.
const prettyDepth = 64;

// pretty is v as indented JSON, or a note when it nests deeper than
// prettyDepth levels.
export function pretty(v) {
  v = v ?? {};
  const todo = [[v, 1]];
  while (todo.length) {
    const [x, d] = todo.pop();
    if (x === null || typeof x !== 'object') continue;
    if (d > prettyDepth) return `(nested deeper than ${prettyDepth} levels: not shown; the API returns it)`;
    for (const k in x) todo.push([x[k], d + 1]);
  }
  return JSON.stringify(v, null, 2);
}

// copy puts text on the clipboard; plain-http pages have no Clipboard API.
export async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const ta = h('textarea', { class: 'offscreen' });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    document.execCommand('copy');
    ta.remove();
  }
  if (button) {
    const was = button.textContent;
    button.textContent = 'Copied';
    setTimeout(() => { button.textContent = was; }, 1200);
  }
}

// topicMatch reports whether an MQTT topic matches a filter with + and #.
export function topicMatch(filter, topic) {
  if (filter === topic) return true;
  const f = filter.split('/'), t = topic.split('/');
  if (t[0].startsWith('$') !== f[0].startsWith('$')) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

export function statusPill(online, enabled = true) {
  if (enabled === false) return h('span', { class: 'pill disabled', text: 'disabled' });
  return h('span', { class: 'pill ' + (online ? 'online' : 'offline'), text: online ? 'online' : 'offline' });
}
