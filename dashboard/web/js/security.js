// Security (admins): intrusion detection from GET /security. Recent
// refusals (failed logins, ACL denials), the bans in force, each with a
// Lift button (DELETE /security/bans/{key}), and the top offenders.
// Everything shown comes from clients and is set as text, never as HTML.

import { h, fill, fmtTime, fmtAgo, fmtDuration } from './util.js';
import { get, del, enc } from './api.js';

export function securityView(main) {
  const err = h('p', { class: 'error', role: 'alert', id: 'security-error' });
  const summary = h('p', { class: 'muted small', id: 'security-summary' });
  const bans = h('tbody', { id: 'ban-rows' });
  const offenders = h('tbody', { id: 'offender-rows' });
  const refusals = h('tbody', { id: 'refusal-rows' });
  const refresh = h('button', { class: 'ghost small', type: 'button', id: 'security-refresh' }, 'Refresh');
  const empty = (n, text) => h('tr', {}, h('td', { colSpan: n, class: 'muted small', text }));
  const who = (x) => x.identity ? x.identity + ' at ' + x.address : x.address;

  const lift = async (key, btn) => {
    btn.disabled = true;
    err.textContent = '';
    try {
      await del('/security/bans/' + enc(key));
      await load();
    } catch (e) { err.textContent = e.message; btn.disabled = false; }
  };

  const load = async () => {
    try {
      const s = await get('/security');
      err.textContent = '';
      summary.textContent = s.enabled
        ? `${s.threshold} refusals within ${fmtDuration(s.window)} ban an address, or an identity at an address, for ${fmtDuration(s.duration)}. A restart lifts every ban.`
        : 'Bans are off (security.ban_threshold: 0); refusals are still listed.';
      fill(bans, s.bans.length ? s.bans.map((b) => h('tr', { dataset: { key: b.key } },
        h('td', {}, h('span', { class: 'pill bad', text: b.kind })),
        h('td', { class: 'mono', text: who(b) }),
        h('td', { text: String(b.refusals) }),
        h('td', { class: 'small', text: fmtTime(b.since) + (b.node ? ' on ' + b.node : '') }),
        h('td', { class: 'small', text: fmtTime(b.until) }),
        h('td', {}, h('button', { class: 'ghost small lift', type: 'button', onclick: (ev) => lift(b.key, ev.currentTarget) }, 'Lift')))) : empty(6, 'No bans in force.'));
      fill(offenders, s.offenders.length ? s.offenders.map((o) => h('tr', { dataset: { key: o.key } },
        h('td', { class: 'small', text: o.kind }),
        h('td', { class: 'mono', text: who(o) }),
        h('td', { text: String(o.recent) }), h('td', { text: String(o.total) }),
        h('td', { class: 'small', text: fmtAgo(o.last) }),
        h('td', {}, o.banned ? h('span', { class: 'pill bad', text: 'banned' }) : null))) : empty(6, 'Nobody has been refused.'));
      fill(refusals, s.refusals.length ? s.refusals.map((r) => h('tr', { dataset: { kind: r.kind } },
        h('td', { class: 'muted small', text: fmtTime(r.time) }),
        h('td', {}, h('span', { class: 'pill', text: r.kind })),
        h('td', { class: 'mono', text: r.identity || '—' }),
        h('td', { class: 'mono small', text: r.address + (r.node ? ' → ' + r.node : '') }),
        h('td', { class: 'small', text: r.detail }))) : empty(5, 'No refusals since the server started.'));
    } catch (e) { err.textContent = e.message; }
  };

  const table = (id, cols, body) => h('div', { class: 'table-wrap' },
    h('table', { id }, h('thead', {}, h('tr', {}, cols.map((c) => h('th', { text: c })))), body));
  refresh.addEventListener('click', load);
  main.append(
    h('div', { class: 'head' }, h('div', {}, h('h1', { text: 'Security' }), summary), h('div', { class: 'row' }, refresh)),
    err,
    h('section', { class: 'panel', id: 'bans' }, h('h2', { text: 'Bans in force' }),
      table('ban-table', ['Kind', 'Who', 'Refusals', 'Since', 'Until', ''], bans)),
    h('div', { class: 'grid two' },
      h('section', { class: 'panel', id: 'offenders' }, h('h2', { text: 'Top offenders' }),
        table('offender-table', ['Kind', 'Who', 'Recent', 'Total', 'Last', ''], offenders)),
      h('section', { class: 'panel', id: 'refusals' }, h('h2', { text: 'Recent refusals' }),
        table('refusal-table', ['Time', 'Kind', 'Identity', 'From', 'What'], refusals))));
  load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}
