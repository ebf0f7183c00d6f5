// The device list: search and filters over the whole fleet, in pages of
// 50 rows, redrawn at most a few times a second while statuses stream in.

import { h, fill, frame, fmtAgo, statusPill } from './util.js';
import { can } from './api.js';
import { fleet } from './fleet.js';

const PAGE = 50;
const state = { q: '', status: '', type: '', label: '', page: 0 }; // kept across visits

export function devicesView(main) {
  const q = h('input', { type: 'search', id: 'f-q', placeholder: 'Search id or name', value: state.q, 'aria-label': 'Search' });
  const status = h('select', { id: 'f-status', 'aria-label': 'Status' },
    h('option', { value: '' }, 'Any status'), h('option', { value: 'online' }, 'Online'),
    h('option', { value: 'offline' }, 'Offline'), h('option', { value: 'disabled' }, 'Disabled'));
  status.value = state.status;
  const type = h('select', { id: 'f-type', 'aria-label': 'Type' }, h('option', { value: '' }, 'Any type'));
  const label = h('input', { id: 'f-label', placeholder: 'label or key=value', value: state.label, 'aria-label': 'Label', size: 14 });
  const tbody = h('tbody', { id: 'device-rows' });
  const summary = h('span', { class: 'muted small', id: 'device-count' });
  const prev = h('button', { class: 'ghost small', type: 'button', onclick: () => { state.page--; draw(); } }, '← Previous');
  const next = h('button', { class: 'ghost small', type: 'button', onclick: () => { state.page++; draw(); } }, 'Next →');
  const pageInfo = h('span', { class: 'muted small' });

  main.append(
    h('div', { class: 'head' },
      h('h1', { text: 'Devices' }),
      can('admin') ? h('div', { class: 'actions' }, h('a', { href: '#/register', class: 'button' }, 'Register a device')) : null),
    h('section', { class: 'panel' },
      h('div', { class: 'filters' }, q, status, type, label),
      h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', { text: 'Status' }), h('th', { text: 'Device' }), h('th', { text: 'Type' }),
          h('th', { class: 'hide-sm', text: 'Labels' }), h('th', { class: 'hide-sm', text: 'Transport' }), h('th', { text: 'Last seen' }))),
        tbody)),
      h('div', { class: 'pager' }, summary, h('div', { class: 'actions' }, prev, pageInfo, next))));

  const onFilter = () => {
    Object.assign(state, { q: q.value.trim().toLowerCase(), status: status.value, type: type.value, label: label.value.trim(), page: 0 });
    draw();
  };
  q.addEventListener('input', onFilter);
  label.addEventListener('input', onFilter);
  status.addEventListener('change', onFilter);
  type.addEventListener('change', onFilter);
  tbody.addEventListener('click', (ev) => {
    const tr = ev.target.closest('tr[data-id]');
    if (tr && !ev.target.closest('a')) location.hash = '#/devices/' + encodeURIComponent(tr.dataset.id);
  });

  let types = '';
  const draw = frame(() => {
    if (!fleet.loaded) { fill(tbody, h('tr', {}, h('td', { colSpan: 6, class: 'muted', text: 'Loading devices…' }))); return; }
    const all = [...fleet.byId.values()];
    // The type menu follows the fleet.
    const ts = [...new Set(all.map((d) => d.type).filter(Boolean))].sort();
    if (ts.join('\n') !== types) {
      types = ts.join('\n');
      fill(type, h('option', { value: '' }, 'Any type'), ts.map((t) => h('option', { value: t }, t)));
      type.value = ts.includes(state.type) ? state.type : '';
    }
    const [lk, lv] = state.label.split('=', 2).map((s) => s && s.trim());
    const match = (d) =>
      (!state.q || d.id.toLowerCase().includes(state.q) || (d.name || '').toLowerCase().includes(state.q)) &&
      (!state.type || d.type === state.type) &&
      (!state.status || (state.status === 'disabled' ? d.enabled === false : state.status === 'online' ? !!d.online : !d.online)) &&
      (!lk || (d.labels && lk in d.labels && (lv === undefined || d.labels[lk] === lv)));
    const rows = all.filter(match).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    const shown = rows.slice(state.page * PAGE, state.page * PAGE + PAGE);
    fill(tbody, shown.length ? shown.map(row) : h('tr', {}, h('td', { colSpan: 6, class: 'muted', text: all.length ? 'No device matches.' : 'No devices registered yet.' })));
    const online = rows.reduce((n, d) => n + (d.online ? 1 : 0), 0);
    summary.textContent = `${rows.length.toLocaleString()} of ${all.length.toLocaleString()} devices · ${online.toLocaleString()} online`;
    pageInfo.textContent = `page ${state.page + 1} of ${pages}`;
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
  }, 300);

  const off = fleet.onChange(draw);
  fleet.refresh();
  const ago = setInterval(draw, 15000); // "last seen" ages
  draw();
  q.focus();
  return () => { off(); clearInterval(ago); draw.cancel(); };
}

function row(d) {
  return h('tr', { class: 'link', dataset: { id: d.id, online: d.online ? 'true' : 'false' } },
    h('td', {}, statusPill(d.online, d.enabled)),
    h('td', {}, h('a', { href: '#/devices/' + encodeURIComponent(d.id), text: d.name && d.name !== d.id ? d.name : d.id }),
      d.name && d.name !== d.id ? h('div', { class: 'muted small mono', text: d.id }) : null),
    h('td', { text: d.type || '—' }),
    h('td', { class: 'hide-sm' }, Object.entries(d.labels || {}).map(([k, v]) => h('span', { class: 'label-tag', text: v ? `${k}=${v}` : k }))),
    h('td', { class: 'hide-sm mono', text: d.online ? d.transport || '—' : '—' }),
    h('td', { class: 'muted', text: d.online ? 'now' : fmtAgo(d.last_seen) }));
}
