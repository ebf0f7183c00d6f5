// Broker statistics from mochi's $SYS/broker/... topics (published every
// mqtt.sys_interval): the latest value of each, and messages per second in
// and out, derived from the message counters, for the last five minutes.

import { live } from './live.js';

const KEEP = 300;
// The topics mochi v2.7.9 publishes under $SYS/broker/ (publishSysTopics).
const SYS_TOPICS = ['version', 'time', 'uptime', 'started', 'load/bytes/received', 'load/bytes/sent',
  'clients/connected', 'clients/disconnected', 'clients/maximum', 'clients/total', 'packets/received',
  'packets/sent', 'messages/received', 'messages/sent', 'messages/dropped', 'messages/inflight',
  'retained', 'subscriptions', 'system/memory', 'system/threads'];

class Sys {
  constructor() {
    this.values = {};                 // "clients/connected" -> number or string
    this.rate = { in: [], out: [], t: [] }; // samples for the chart, seconds
    this.prev = {};                   // counter -> {v, t}
    this.last = { in: null, out: null };
    this.fns = new Set();
    this.stop = null;
  }

  reset() {
    if (this.stop) this.stop();
    this.stop = null;
    this.values = {};
    this.rate = { in: [], out: [], t: [] };
    this.prev = {};
    this.last = { in: null, out: null };
  }

  start() {
    if (this.stop) return;
    // One subscription per topic, not $SYS/broker/#: the engine reads a
    // wildcard subscription's retained messages without the lock its $SYS
    // publisher (every sys_interval) writes them under (a data race in
    // mochi v2.7.9, docs/upstream.md); an exact topic takes the locked path.
    const stops = SYS_TOPICS.map((t) => live.on('$SYS/broker/' + t, (topic, text) => this.onSys(topic.slice(12), text)));
    this.stop = () => stops.forEach((f) => f());
  }

  onSys(key, text) {
    const n = Number(text);
    this.values[key] = text !== '' && !isNaN(n) ? n : text;
    const which = key === 'messages/received' ? 'in' : key === 'messages/sent' ? 'out' : null;
    if (which) this.count(which, n);
    for (const f of this.fns) f(key);
  }

  count(which, v) {
    const now = performance.now();
    const p = this.prev[which];
    this.prev[which] = { v, t: now };
    // The first (retained) value is only a base; a counter that went
    // back means the broker restarted.
    if (!p || v < p.v || now - p.t < 300) return;
    const r = (v - p.v) / ((now - p.t) / 1000);
    this.last[which] = r;
    if (which === 'in') {
      this.rate.t.push(Date.now() / 1000);
      this.rate.in.push(r);
      this.rate.out.push(this.last.out ?? null);
      if (this.rate.t.length > KEEP) { this.rate.t.shift(); this.rate.in.shift(); this.rate.out.shift(); }
    } else if (this.rate.out.length) {
      this.rate.out[this.rate.out.length - 1] = r;
    }
  }

  onChange(f) { this.fns.add(f); return () => this.fns.delete(f); }
}

export const sys = new Sys();
window.tetherSys = sys; // for the browser tests
