// Accounts: users (roles, passwords, deletion), API tokens (created with
// their plaintext shown once, revoked), one's own password, and the audit
// log.

import { h, fill, copy, fmtTime } from './util.js';
import { get, post, patch, del, enc, session, can } from './api.js';

const ROLES = ['viewer', 'operator', 'admin'];

// ask shows a small modal form and resolves with its values, or null when
// cancelled. fields: [{name, label, type}]; submit(values) may throw to
// show an error and keep the dialog open.
function ask(heading, fields, submitText, submit) {
  const dlg = document.getElementById('dialog');
  return new Promise((resolve) => {
    const inputs = fields.map((f) => h('input', { name: f.name, id: 'ask-' + f.name, type: f.type || 'text', required: true,
      minLength: f.minLength || null, autocomplete: f.autocomplete || 'off' }));
    const err = h('p', { class: 'error', role: 'alert' });
    const ok = h('button', { type: 'submit', id: 'ask-submit' }, submitText);
    const cancel = h('button', { type: 'button', class: 'ghost', id: 'ask-cancel' }, 'Cancel');
    const form = h('form', { class: 'form', method: 'dialog' },
      h('h2', { text: heading }),
      fields.map((f, i) => h('label', {}, f.label, inputs[i])), err,
      h('p', { class: 'actions' }, cancel, ok));
    let done = false;
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      const v = Object.fromEntries(fields.map((f, i) => [f.name, inputs[i].value]));
      ok.disabled = true;
      try {
        const r = await submit(v);
        done = true;
        dlg.close();
        resolve(r === undefined ? v : r);
      } catch (e) { err.textContent = e.message; }
      finally { ok.disabled = false; }
    });
    cancel.addEventListener('click', () => dlg.close());
    dlg.addEventListener('close', () => { fill(dlg); if (!done) resolve(null); }, { once: true });
    fill(dlg, form);
    dlg.showModal();
    inputs[0].focus();
  });
}

// newPassword asks for a password twice.
const passwordFields = [
  { name: 'password', label: 'New password (8 to 72 bytes)', type: 'password', minLength: 8, autocomplete: 'new-password' },
  { name: 'again', label: 'New password again', type: 'password', minLength: 8, autocomplete: 'new-password' },
];
function checkAgain(v) {
  if (v.password !== v.again) throw new Error('The two passwords differ.');
}

export function usersView(main) {
  const rows = h('tbody', { id: 'user-rows' });
  const name = h('input', { id: 'user-name', required: true, autocomplete: 'off' });
  const pass = h('input', { id: 'user-password', type: 'password', required: true, minLength: 8, autocomplete: 'new-password' });
  const role = h('select', { id: 'user-role' }, ROLES.map((r) => h('option', { value: r }, r)));
  const err = h('p', { class: 'error', role: 'alert' });
  const note = h('p', { class: 'error', role: 'alert', id: 'users-error' });
  const btn = h('button', { type: 'submit', id: 'user-submit' }, 'Add user');
  const form = h('form', { class: 'form', id: 'user-form' },
    h('div', { class: 'row' }, h('label', {}, 'User name', name), h('label', {}, 'Password', pass), h('label', {}, 'Role', role)), err, h('div', {}, btn));
  main.append(h('div', { class: 'head' }, h('h1', { text: 'Users' })),
    h('div', { class: 'grid two' },
      h('section', { class: 'panel' }, h('h2', { text: 'People' }), note,
        h('div', { class: 'table-wrap' }, h('table', {},
          h('thead', {}, h('tr', {}, h('th', { text: 'User' }), h('th', { text: 'Role' }), h('th', { text: 'Created' }), h('th', {}))), rows))),
      h('section', { class: 'panel' }, h('h2', { text: 'Add a user' }), form,
        h('p', { class: 'muted small', text: 'Viewers see everything; operators also send commands and set desired twin state; admins also manage devices and users. Deleting a user, or changing their role or password, closes their live connections at once.' }))));
  const me = session.get().username;
  const row = (u) => {
    const sel = h('select', { class: 'user-role', 'aria-label': 'Role of ' + u.username, dataset: { user: u.username } },
      ROLES.map((r) => h('option', { value: r, selected: r === u.role }, r)));
    sel.addEventListener('change', async () => {
      note.textContent = '';
      if (!confirm(`Make ${u.username} ${sel.value}? Their live connections are closed and come back with the new role.`)) { sel.value = u.role; return; }
      try {
        const r = await patch('/users/' + enc(u.username), { role: sel.value });
        u.role = r.role;
        if (u.username === me) session.set({ ...session.get(), role: r.role });
      } catch (e) { note.textContent = e.message; sel.value = u.role; }
    });
    const pw = h('button', { class: 'ghost small user-passwd', type: 'button', dataset: { user: u.username } }, 'Set password');
    pw.addEventListener('click', () => ask(`New password for ${u.username}`, passwordFields, 'Set password', async (v) => {
      checkAgain(v);
      await patch('/users/' + enc(u.username), { password: v.password });
    }).then((r) => { if (r) note.textContent = ''; }));
    const rm = h('button', { class: 'danger small user-delete', type: 'button', dataset: { user: u.username } }, 'Delete');
    rm.addEventListener('click', async () => {
      note.textContent = '';
      if (!confirm(`Delete ${u.username}? Their tokens and sessions end and their connections close at once.`)) return;
      try { await del('/users/' + enc(u.username)); load(); } catch (e) { note.textContent = e.message; }
    });
    return h('tr', { dataset: { user: u.username } }, h('td', { text: u.username }), h('td', {}, sel),
      h('td', { class: 'muted small', text: fmtTime(u.created_at) }), h('td', {}, h('div', { class: 'actions' }, pw, rm)));
  };
  const load = async () => {
    try {
      const all = [];
      let cursor = '';
      do {
        const r = await get('/users?limit=1000' + (cursor ? '&cursor=' + enc(cursor) : ''));
        all.push(...(r.users || []));
        cursor = r.next_cursor || '';
      } while (cursor);
      fill(rows, all.map(row));
    } catch (e) { fill(rows, h('tr', {}, h('td', { colSpan: 4, class: 'error', text: e.message }))); }
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    btn.disabled = true;
    try {
      await post('/users', { username: name.value.trim(), password: pass.value, role: role.value });
      form.reset();
      load();
    } catch (e) { err.textContent = e.message; }
    finally { btn.disabled = false; }
  });
  load();
}

// tokenDialog shows a new token's plaintext, the one time it exists.
function tokenDialog(t) {
  const dlg = document.getElementById('dialog');
  const close = h('button', { type: 'button', id: 'token-close' }, 'I have stored the token');
  const cp = h('button', { class: 'ghost small', type: 'button' }, 'Copy');
  cp.addEventListener('click', () => copy(t.token, cp));
  fill(dlg,
    h('h2', { text: 'Token created' }),
    h('p', {}, 'Token ', h('code', { text: t.name }), ' for ', h('strong', { text: t.username }),
      t.expires_at ? ', valid until ' + fmtTime(t.expires_at) : ', never expires',
      '. It is shown ', h('strong', { text: 'this once' }), ' — Tether keeps only a hash.'),
    h('div', { class: 'row' }, h('div', { class: 'secret mono', id: 'token-plaintext', text: t.token }), cp),
    h('p', { class: 'muted small' }, 'Use it as ', h('code', { text: 'Authorization: Bearer …' }), ', as TETHER_TOKEN for the tether CLI, or as an MQTT password.'),
    h('p', { class: 'actions' }, close));
  close.addEventListener('click', () => dlg.close());
  dlg.addEventListener('close', () => fill(dlg), { once: true });
  dlg.showModal();
}

export function tokensView(main) {
  const admin = can('admin');
  const rows = h('tbody', { id: 'token-rows' });
  const note = h('p', { class: 'error', role: 'alert', id: 'tokens-error' });
  const name = h('input', { id: 'token-name', required: true, autocomplete: 'off', placeholder: 'ci-deploy' });
  const user = h('input', { id: 'token-user', autocomplete: 'off', placeholder: session.get().username });
  const ttl = h('select', { id: 'token-ttl' },
    [['', '90 days'], [String(30 * 86400), '30 days'], [String(365 * 86400), '1 year'], ['0', 'never expires']].map(([v, l]) => h('option', { value: v }, l)));
  const err = h('p', { class: 'error', role: 'alert' });
  const btn = h('button', { type: 'submit', id: 'token-submit' }, 'Create token');
  const form = h('form', { class: 'form', id: 'token-form' },
    h('div', { class: 'row' }, h('label', {}, 'Name', name), admin ? h('label', {}, 'For user', user) : null, h('label', {}, 'Expires', ttl)),
    err, h('div', {}, btn));
  main.append(h('div', { class: 'head' }, h('h1', { text: 'API tokens' })),
    h('div', { class: 'grid two' },
      h('section', { class: 'panel' }, h('h2', { text: admin ? 'All tokens' : 'Your tokens' }), note,
        h('div', { class: 'table-wrap' }, h('table', {},
          h('thead', {}, h('tr', {}, h('th', { text: 'Name' }), h('th', { text: 'User' }), h('th', { text: 'Created' }), h('th', { text: 'Expires' }), h('th', {}))), rows))),
      h('section', { class: 'panel' }, h('h2', { text: 'Create a token' }), form,
        h('p', { class: 'muted small', text: 'A token acts with its user\'s role. Revoking it refuses it at once and closes the MQTT connections made with it.' }))));
  const load = async () => {
    try {
      const all = [];
      let cursor = '';
      do {
        const r = await get('/tokens?limit=1000' + (cursor ? '&cursor=' + enc(cursor) : ''));
        all.push(...(r.tokens || []));
        cursor = r.next_cursor || '';
      } while (cursor);
      all.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
      fill(rows, all.map((t) => {
        const rv = h('button', { class: 'danger small token-revoke', type: 'button', dataset: { id: t.id } }, 'Revoke');
        rv.addEventListener('click', async () => {
          note.textContent = '';
          if (!confirm(`Revoke the token ${t.name} of ${t.username}? Whatever uses it is refused from now on.`)) return;
          try { await del('/tokens/' + enc(t.id)); load(); } catch (e) { note.textContent = e.message; }
        });
        return h('tr', { dataset: { id: t.id } }, h('td', { text: t.name }), h('td', { text: t.username }),
          h('td', { class: 'muted small', text: fmtTime(t.created_at) }),
          h('td', { class: 'muted small', text: t.expires_at ? fmtTime(t.expires_at) : 'never' }), h('td', {}, rv));
      }));
    } catch (e) { fill(rows, h('tr', {}, h('td', { colSpan: 5, class: 'error', text: e.message }))); }
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    btn.disabled = true;
    try {
      const body = { name: name.value.trim() };
      if (admin && user.value.trim()) body.username = user.value.trim();
      if (ttl.value !== '') body.ttl = Number(ttl.value);
      const t = await post('/tokens', body);
      form.reset();
      load();
      tokenDialog(t);
    } catch (e) { err.textContent = e.message; }
    finally { btn.disabled = false; }
  });
  load();
}

// accountView lets anyone change their own password; every session of
// theirs ends with it, this one included.
export function accountView(main, _params, { toLogin }) {
  const s = session.get();
  const current = h('input', { id: 'pw-current', type: 'password', required: true, autocomplete: 'current-password' });
  const next = h('input', { id: 'pw-new', type: 'password', required: true, minLength: 8, autocomplete: 'new-password' });
  const again = h('input', { id: 'pw-again', type: 'password', required: true, minLength: 8, autocomplete: 'new-password' });
  const err = h('p', { class: 'error', role: 'alert', id: 'pw-error' });
  const btn = h('button', { type: 'submit', id: 'pw-submit' }, 'Change password');
  const form = h('form', { class: 'panel form', id: 'password-form' },
    h('h2', { text: 'Change your password' }),
    h('label', {}, 'Current password', current), h('label', {}, 'New password (8 to 72 bytes)', next), h('label', {}, 'New password again', again),
    err, h('div', {}, btn),
    h('p', { class: 'muted small', text: 'Your dashboard sessions end, this one too: log in again with the new password. Your API tokens stay valid; revoke them on the Tokens page.' }));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    if (next.value !== again.value) { err.textContent = 'The two new passwords differ.'; return; }
    btn.disabled = true;
    try {
      await patch('/users/' + enc(s.username), { password: next.value, current_password: current.value });
      toLogin('Your password was changed; log in with the new one.');
    } catch (e) { err.textContent = e.message; }
    finally { btn.disabled = false; }
  });
  main.append(h('div', { class: 'head' }, h('div', {}, h('h1', { text: 'Your account' }),
    h('p', { class: 'muted small', text: `${s.username} · ${s.role}` }))), form);
}

const ACTIONS = ['login', 'login_refused', 'logout', 'device_created', 'device_updated', 'device_deleted', 'secret_rotated',
  'device_exported', 'user_created', 'user_deleted', 'role_changed', 'password_changed', 'token_created', 'token_revoked', 'banned', 'ban_lifted', 'session_deleted', 'rules_reloaded'];

// auditView is the audit log, newest first, a page at a time.
export function auditView(main) {
  const rows = h('tbody', { id: 'audit-rows' });
  const err = h('p', { class: 'error', role: 'alert' });
  const action = h('select', { id: 'audit-action' }, h('option', { value: '' }, 'all actions'), ACTIONS.map((a) => h('option', { value: a }, a.replaceAll('_', ' '))));
  const more = h('button', { class: 'ghost', type: 'button', id: 'audit-more', hidden: true }, 'Older entries');
  const refresh = h('button', { class: 'ghost small', type: 'button', id: 'audit-refresh' }, 'Refresh');
  let cursor = '';
  const bad = new Set(['login_refused', 'banned', 'user_deleted', 'device_deleted', 'token_revoked']);
  const load = async (append) => {
    err.textContent = '';
    try {
      const q = '/audit?limit=100' + (action.value ? '&action=' + enc(action.value) : '') + (append && cursor ? '&cursor=' + enc(cursor) : '');
      const r = await get(q);
      const trs = (r.entries || []).map((e) => h('tr', { dataset: { action: e.action } },
        h('td', { class: 'muted small', text: fmtTime(e.time) }),
        h('td', {}, h('span', { class: 'pill' + (bad.has(e.action) ? ' bad' : ''), text: e.action.replaceAll('_', ' ') })),
        h('td', { text: e.actor || '—' }), h('td', { class: 'muted small', text: e.via }),
        h('td', { class: 'mono', text: e.target }), h('td', { class: 'mono small', text: e.remote }),
        h('td', { class: 'small', text: e.detail })));
      if (append) rows.append(...trs); else fill(rows, trs);
      cursor = r.next_cursor || '';
      more.hidden = !cursor;
    } catch (e) { err.textContent = e.message; }
  };
  action.addEventListener('change', () => load(false));
  refresh.addEventListener('click', () => load(false));
  more.addEventListener('click', () => load(true));
  main.append(h('div', { class: 'head' }, h('div', {}, h('h1', { text: 'Audit log' }),
    h('p', { class: 'muted small', text: 'Who did what, when and from where: logins and refusals, registrations, deletions, secret rotations, role, password and token changes.' })),
    h('div', { class: 'row' }, action, refresh)),
    h('section', { class: 'panel' }, err, h('div', { class: 'table-wrap' }, h('table', { id: 'audit-table' },
      h('thead', {}, h('tr', {}, ['Time', 'Action', 'Who', 'Via', 'Target', 'From', 'Detail'].map((c) => h('th', { text: c })))), rows)),
    h('p', {}, more)));
  load(false);
}
