// The twin: desired state (editable by operators), reported state and the
// delta between them. Edits are sent as a JSON merge patch (PATCH
// /devices/{id}/twin, null removes a key); the panel refreshes when the
// device reports or the desired state changes.

import { h, fill, frame, pretty } from './util.js';
import { get, patch, can, enc } from './api.js';
import { live } from './live.js';

export function twinPanel(id) {
  let twin = null;
  const desired = can('operator') ? h('textarea', { id: 'twin-desired', rows: 8, spellcheck: false }) : h('pre', { id: 'twin-desired' });
  const reported = h('pre', { id: 'twin-reported' });
  const delta = h('pre', { id: 'twin-delta' });
  const versions = h('span', { class: 'muted small', id: 'twin-versions' });
  const err = h('p', { class: 'error', role: 'alert' });
  const save = can('operator') ? h('button', { id: 'twin-save', type: 'button' }, 'Save desired state') : null;
  let editing = false;
  if (save) {
    desired.addEventListener('input', () => { editing = true; });
    save.addEventListener('click', async () => {
      err.textContent = '';
      let next;
      try {
        next = JSON.parse(desired.value || '{}');
        if (!next || typeof next !== 'object' || Array.isArray(next)) throw new Error();
      } catch { err.textContent = 'Desired state must be a JSON object.'; return; }
      const p = mergePatch((twin && twin.desired) || {}, next);
      save.disabled = true;
      try {
        if (Object.keys(p).length) await patch(`/devices/${enc(id)}/twin`, { desired: p });
        editing = false;
        load();
      } catch (e) { err.textContent = e.message; }
      finally { save.disabled = false; }
    });
  }
  const el = h('section', { class: 'panel', id: 'twin' },
    h('div', { class: 'head' }, h('h2', { text: 'Twin' }), versions),
    h('div', { class: 'stack' },
      h('div', {}, h('h3', { text: 'Desired' }), desired, err, save),
      h('div', { class: 'twin' },
        h('div', {}, h('h3', { text: 'Reported' }), reported),
        h('div', {}, h('h3', { text: 'Delta' }), delta))));

  const draw = () => {
    if (!twin) return;
    const d = pretty(twin.desired);
    if (desired.tagName === 'TEXTAREA') { if (!editing) desired.value = d; } else desired.textContent = d;
    reported.textContent = pretty(twin.reported);
    delta.textContent = pretty(twin.delta);
    fill(versions, `desired v${twin.desired_version ?? 0} · reported v${twin.reported_version ?? 0}`);
  };
  // Reloaded at most every 250 ms and within 250 ms of a report, however
  // often the device reports (a reload put off by each report never came
  // for a device reporting more often than that).
  const load = frame(async () => {
    try { twin = await get(`/devices/${enc(id)}/twin`); draw(); } catch (e) { err.textContent = e.message; }
  }, 250);
  load();
  const off1 = live.on(`devices/${id}/twin/reported`, load);
  const off2 = live.on(`devices/${id}/twin/desired`, load);
  return { el, close: () => { off1(); off2(); load.cancel(); } };
}

// mergePatch returns the RFC 7386 patch that turns a into b.
export function mergePatch(a, b) {
  const p = {};
  for (const k of Object.keys(a)) if (!(k in b)) p[k] = null;
  for (const [k, v] of Object.entries(b)) {
    const old = a[k];
    if (isObj(old) && isObj(v)) {
      const sub = mergePatch(old, v);
      if (Object.keys(sub).length) p[k] = sub;
    } else if (JSON.stringify(old) !== JSON.stringify(v)) {
      p[k] = v;
    }
  }
  return p;
}
const isObj = (v) => v && typeof v === 'object' && !Array.isArray(v);
