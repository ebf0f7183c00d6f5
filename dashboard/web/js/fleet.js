// The fleet: every registered device, loaded once from the API in pages
// of 1,000 and kept current from the retained devices/+/status messages.
// Views read fleet.devices and redraw (throttled) when fleet.version moves.

import { allDevices, get, enc } from './api.js';
import { live } from './live.js';

const FETCH_EACH = 10;          // devices asked about one by one per 500 ms
const RELOAD_EVERY = 30000;     // ms between registry loads for many unknown ids
const MISSING_FOR = 60000;      // ms an id the registry has not is not asked about again
const MISSING_MAX = 10000;      // such ids remembered
const FETCH_EVERY = 500;        // ms between lookups of unknown ids
const RETRY_MAX = 30000;        // ms between lookups at most, while they fail

class Fleet {
  constructor() {
    this.byId = new Map();
    this.version = 0;
    this.loaded = false;
    this.loading = null;
    this.fns = new Set();
    this.unknown = new Set(); // ids seen on status topics but not loaded yet
    this.missing = new Map(); // id -> { at: when the registry said it has no such device, online: its last status, retried: when last looked up early }
    this.early = new Map();   // id -> status received before the first load
    this.statuses = 0;
    this.fetchTimer = 0;
    this.fetchDelay = FETCH_EVERY;
    this.stopLive = null;
  }

  // load fetches the registry (once; again with force) and starts following
  // status messages.
  load(force = false) {
    if (this.loading && !force) return this.loading;
    this.loadedAt = Date.now();
    this.loading = (async () => {
      const t0 = performance.now();
      const next = new Map();
      await allDevices((page) => { for (const d of page) next.set(d.id, this.merge(this.byId.get(d.id), d)); });
      this.byId = next;
      this.loaded = true;
      for (const id of this.missing.keys()) if (next.has(id)) this.missing.delete(id);
      // Statuses that arrived before the registry did.
      for (const [id, st] of this.early) this.applyStatus(id, st);
      this.early.clear();
      this.loadMs = performance.now() - t0; // for the measurements
      this.changed();
    })();
    if (!this.stopLive) this.stopLive = live.on('devices/+/status', (topic, text) => this.onStatus(topic, text));
    this.loading.catch(() => { this.loading = null; });
    return this.loading;
  }

  // refresh reloads the registry when the last load is older than maxAge
  // ms, to pick up devices registered elsewhere that have not connected.
  refresh(maxAge = 30000) {
    if (this.loaded && Date.now() - this.loadedAt > maxAge) this.load(true).catch(() => {});
  }

  // merge keeps the live status when it is newer than what the API says.
  merge(old, d) {
    if (old && old._statusAt && (!d.last_seen || new Date(d.last_seen) <= old._statusAt)) {
      d.online = old.online;
      d.transport = old.transport;
      d.last_seen = old.last_seen;
      d._statusAt = old._statusAt;
    }
    return d;
  }

  onStatus(topic, text) {
    this.statuses++; // for the measurements
    const id = topic.slice(8, -7); // devices/{id}/status
    if (text === '') { this.deleted(id); return; }
    let st;
    try { st = JSON.parse(text); } catch { return; }
    if (!st || typeof st !== 'object') return;
    if (!this.loaded) { this.early.set(id, st); return; }
    this.applyStatus(id, st);
    this.changed();
  }

  applyStatus(id, st) {
    let d = this.byId.get(id);
    if (!d) {
      // A status for an id the registry said it does not have (a device
      // deleted since, or anyone allowed to publish there) is not shown,
      // nor asked about again for a minute; except once, early, when it
      // says online where the last one did not (or the status was
      // deleted): the device may have been registered again since.
      const m = this.missing.get(id);
      if (m && Date.now() - m.at < MISSING_FOR) {
        const again = st.online && !m.online && Date.now() - m.retried >= MISSING_FOR;
        m.online = !!st.online;
        if (!again) return;
        m.retried = Date.now();
      } else {
        this.missing.delete(id);
      }
      d = { id, name: id, type: '', labels: {}, enabled: true, _stub: true };
      this.byId.set(id, d);
      this.unknown.add(id);
      this.fetchUnknownSoon();
    }
    d.online = !!st.online;
    if (st.transport) d.transport = st.transport;
    if (st.since) { d.last_seen = st.since; d._statusAt = new Date(st.since); }
  }

  // fetchUnknownSoon asks the API about the ids seen on status topics but
  // not in the registry as loaded: every 500 ms (a stream of statuses does
  // not put it off), at most FETCH_EACH devices at a time; more unknown
  // ids than that are answered by loading the registry again (at most
  // every 30 s), so that statuses for many ids never become as many
  // requests. An id the registry does not have is remembered as missing.
  // An id whose lookup failed otherwise (the network, a proxy's 502) is
  // asked about again, after twice as long each time, up to 30 s: the
  // device would otherwise stay a stub until the next load.
  fetchUnknownSoon() {
    if (this.fetchTimer) return;
    this.fetchTimer = setTimeout(async () => {
      let failed = false;
      try {
        if (this.unknown.size > FETCH_EACH && Date.now() - this.loadedAt > RELOAD_EVERY) {
          const ids = [...this.unknown];
          this.unknown.clear();
          try { await this.load(true); } catch { for (const id of ids) this.unknown.add(id); failed = true; return; }
          for (const id of ids) if (!this.byId.has(id) || this.byId.get(id)._stub) this.gone(id);
        } else {
          const retry = [];
          for (const id of [...this.unknown].slice(0, FETCH_EACH)) {
            this.unknown.delete(id);
            try { this.put(await get('/devices/' + enc(id))); } catch (e) {
              if (e.status === 404) this.gone(id);
              else if (e.status !== 401 && e.status !== 403) retry.push(id);
            }
          }
          // To the end: the others are asked about first.
          for (const id of retry) if (this.byId.has(id) && this.byId.get(id)._stub) this.unknown.add(id);
          failed = retry.length > 0;
        }
      } finally {
        this.fetchDelay = failed ? Math.min(this.fetchDelay * 2, RETRY_MAX) : FETCH_EVERY;
        this.fetchTimer = 0;
        if (this.unknown.size) this.fetchUnknownSoon();
      }
    }, this.fetchDelay);
  }

  // deleted: an empty status is the broker deleting a deleted device's
  // retained messages (or anyone allowed to publish there clearing it).
  // The device goes from the page; if the id is remembered as missing,
  // its next status that says online is looked up again (applyStatus).
  deleted(id) {
    if (!this.loaded) { this.early.delete(id); return; }
    const m = this.missing.get(id);
    if (m) m.online = false;
    this.unknown.delete(id);
    this.remove(id);
  }

  gone(id) {
    const m = this.missing.get(id);
    this.unknown.delete(id);
    this.missing.delete(id); // to the end: the oldest go first
    this.missing.set(id, { at: Date.now(), online: (this.byId.get(id) || {}).online !== false, retried: m ? m.retried : 0 });
    if (this.missing.size > MISSING_MAX) this.missing.delete(this.missing.keys().next().value);
    this.remove(id);
  }

  put(d) { this.missing.delete(d.id); this.byId.set(d.id, this.merge(this.byId.get(d.id), d)); this.changed(); }
  remove(id) { if (this.byId.delete(id)) this.changed(); }

  onChange(f) { this.fns.add(f); return () => this.fns.delete(f); }
  changed() { this.version++; for (const f of this.fns) f(); }

  counts() {
    let online = 0, disabled = 0;
    const transports = {};
    for (const d of this.byId.values()) {
      if (d.enabled === false) disabled++;
      if (d.online) {
        online++;
        const t = d.transport || 'unknown';
        transports[t] = (transports[t] || 0) + 1;
      }
    }
    return { total: this.byId.size, online, offline: this.byId.size - online, disabled, transports };
  }

  reset() {
    if (this.stopLive) this.stopLive();
    this.stopLive = null;
    this.byId = new Map();
    this.loaded = false;
    this.loading = null;
    this.early.clear();
    this.unknown.clear();
    this.missing.clear();
    this.changed();
  }
}

export const fleet = new Fleet();
window.tetherFleet = fleet; // for the browser tests and measurements
