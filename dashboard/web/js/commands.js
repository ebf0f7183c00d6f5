// The command console: send a command through the API, watch it go
// pending → delivered → succeeded / failed / expired, and see the history.
// Changes arrive as the device's responses on devices/{id}/responses/+,
// and by asking GET /commands/{id} while a command is still open.

import { h, fill, fmtTime, pretty } from './util.js';
import { get, post, can, enc } from './api.js';
import { live } from './live.js';

const FINAL = new Set(['succeeded', 'failed', 'expired']);

export function commandConsole(id) {
  const rows = h('tbody', { id: 'command-rows' });
  const err = h('p', { class: 'error', role: 'alert' });
  const cmds = new Map(); // id -> command
  let form = null;
  if (can('operator')) {
    const name = h('input', { id: 'cmd-name', placeholder: 'reboot', required: true, pattern: '[^/#+]+', autocomplete: 'off' });
    const params = h('textarea', { id: 'cmd-params', rows: 3, spellcheck: false }, '{}');
    const timeout = h('input', { id: 'cmd-timeout', type: 'number', min: 1, max: 86400, value: 30, size: 5 });
    const send = h('button', { id: 'cmd-send', type: 'submit' }, 'Send');
    form = h('form', { class: 'form', id: 'command-form' },
      h('div', { class: 'row' }, h('label', {}, 'Command', name), h('label', {}, 'Timeout (s)', timeout)),
      h('label', {}, 'Parameters (JSON object)', params), err, h('div', {}, send));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      let p;
      try {
        p = JSON.parse(params.value || '{}');
        if (!p || typeof p !== 'object' || Array.isArray(p)) throw new Error();
      } catch { err.textContent = 'Parameters must be a JSON object.'; return; }
      send.disabled = true;
      try {
        const c = await post(`/devices/${enc(id)}/commands`, { name: name.value.trim(), params: p, timeout: Number(timeout.value) || 30, wait: false });
        put(c);
      } catch (e) { err.textContent = e.message; }
      finally { send.disabled = false; }
    });
  }
  const el = h('section', { class: 'panel', id: 'commands' },
    h('h2', { text: 'Commands' }),
    form || h('p', { class: 'muted small', text: 'Your role can see commands but not send them.' }),
    h('h3', { class: 'small muted', text: 'History' }),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', { text: 'Command' }), h('th', { text: 'Status' }), h('th', { text: 'Result' }))),
      rows)));

  const draw = () => {
    const list = [...cmds.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1)).slice(0, 25);
    fill(rows, list.length ? list.map((c) => h('tr', { dataset: { id: c.id, status: c.status } },
      h('td', {}, h('div', { class: 'mono', text: c.name }), h('div', { class: 'muted small', text: fmtTime(c.created_at) }),
        c.params && Object.keys(c.params).length ? h('div', { class: 'muted small mono', text: JSON.stringify(c.params) }) : null),
      h('td', {}, h('span', { class: 'pill ' + c.status, text: c.status })),
      h('td', { class: 'small' }, c.error ? h('span', { class: 'error', text: c.error }) : null,
        c.result != null && Object.keys(c.result).length ? h('pre', { text: pretty(c.result) }) : null)))
      : h('tr', {}, h('td', { colSpan: 3, class: 'muted', text: 'No commands sent yet.' })));
  };
  const put = (c) => { if (c && c.id) { cmds.set(c.id, { ...cmds.get(c.id), ...c }); draw(); } };
  const refresh = async (cid) => { try { put(await get('/commands/' + enc(cid))); } catch { /* next tick */ } };

  (async () => {
    try { const r = await get(`/devices/${enc(id)}/commands?limit=25`); (r.commands || []).forEach(put); } catch { /* shown empty */ }
    draw();
  })();
  // A response closes a command: fetch its final record at once, for a
  // command the page shows (one sent by others is added by the
  // subscription below, and the timer catches its outcome). Any other id
  // is the device's to choose: its retained messages on responses/+ (up
  // to 10,000) made every view of the page fetch one record each.
  const off = live.on(`devices/${id}/responses/+`, (topic) => {
    const cid = topic.slice(topic.lastIndexOf('/') + 1);
    if (cmds.has(cid)) refresh(cid);
  });
  // Commands sent by others (CLI, API, another dashboard) appear too.
  const offSent = live.on(`devices/${id}/commands/+`, (_t, text) => {
    try { const m = JSON.parse(text); if (m.id && !cmds.has(m.id)) refresh(m.id); } catch { /* not ours */ }
  });
  const timer = setInterval(() => { for (const c of cmds.values()) if (!FINAL.has(c.status)) refresh(c.id); }, 1000);
  return { el, close: () => { off(); offSent(); clearInterval(timer); } };
}
