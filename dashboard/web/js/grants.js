// The device page's topic grants (SPEC §5): what the device may publish
// and subscribe to beyond its own devices/{id}/... topics, for firmware
// with its own conventions (Tasmota tele/%c/SENSOR, Shelly, Home
// Assistant discovery). Admins edit them; a change applies to a connected
// device at once. Everyone else sees them.

import { h, fill } from './util.js';
import { patch, can, enc } from './api.js';
import { fleet } from './fleet.js';

const ACCESS = ['publish', 'subscribe', 'all'];

export function grantsPanel(dev, changed) {
  const admin = can('admin');
  let draft = (dev.topics || []).map((g) => ({ ...g }));
  const rows = h('tbody', { id: 'grant-rows' });
  const err = h('p', { class: 'error', role: 'alert', id: 'grant-error' });
  const saved = h('span', { class: 'muted small', id: 'grant-saved' });
  const filter = h('input', { id: 'grant-filter', placeholder: 'tele/%c/#', autocomplete: 'off', spellcheck: false });
  const access = h('select', { id: 'grant-access' }, ACCESS.map((a) => h('option', { value: a }, a)));
  const add = h('button', { class: 'ghost', type: 'button', id: 'grant-add' }, 'Add');
  const save = h('button', { type: 'button', id: 'grant-save' }, 'Save');

  const draw = () => {
    if (!draft.length) {
      fill(rows, h('tr', {}, h('td', { colSpan: 3, class: 'muted small', text: 'No grants: only its own devices/' + dev.id + '/… topics.' })));
      return;
    }
    fill(rows, draft.map((g, i) => h('tr', { dataset: { filter: g.filter } },
      h('td', { class: 'mono', text: g.filter }),
      h('td', {}, h('span', { class: 'pill', text: g.access })),
      h('td', {}, admin ? removeButton(i) : null))));
  };
  const removeButton = (i) => {
    const b = h('button', { class: 'ghost small', type: 'button', title: 'Remove' }, 'Remove');
    b.addEventListener('click', () => { draft.splice(i, 1); saved.textContent = 'not saved'; draw(); });
    return b;
  };
  add.addEventListener('click', () => {
    const f = filter.value.trim();
    err.textContent = '';
    if (!f) { err.textContent = 'Enter a topic filter.'; return; }
    if (draft.some((g) => g.filter === f)) { err.textContent = f + ' is already granted.'; return; }
    draft.push({ filter: f, access: access.value });
    filter.value = '';
    saved.textContent = 'not saved';
    draw();
  });
  save.addEventListener('click', async () => {
    err.textContent = '';
    save.disabled = true;
    try {
      const d = await patch('/devices/' + enc(dev.id), { topics: draft });
      Object.assign(dev, d);
      draft = (dev.topics || []).map((g) => ({ ...g }));
      fleet.put(dev);
      saved.textContent = 'saved';
      draw();
      changed(dev);
    } catch (e) { err.textContent = e.message; }
    finally { save.disabled = false; }
  });
  draw();
  return h('section', { class: 'panel', id: 'grants' },
    h('h2', { text: 'Topics' }),
    h('p', { class: 'muted small', text: 'Topics this device may use beyond its own; %c stands for its id. Nothing of another device: under devices/ only devices/%c/….' }),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', { text: 'Filter' }), h('th', { text: 'Access' }), h('th', {}))), rows)),
    admin ? [h('div', { class: 'row' }, h('label', {}, 'Filter', filter), h('label', {}, 'Access', access), add),
      err, h('div', { class: 'row' }, save, saved)] : null);
}
