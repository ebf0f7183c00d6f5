// The conformance cases for MQTT.js (cmd/tether/e2e_conform_test.go):
//
//   node conform.js URL [--v5] [--ca FILE] [--prefix P]
//
// runs every case against the broker at URL (mqtt://, mqtts://, ws://,
// wss://) and prints one line per case: "CASE ok", "CASE n/a" (not in this
// MQTT version) or "CASE fail: REASON". It exits 0 when none failed.
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const [url, ...rest] = process.argv.slice(2);
let v5 = false, ca, prefix = 'conform-js';
for (let i = 0; i < rest.length; i++) {
  switch (rest[i]) {
    case '--v5': v5 = true; break;
    case '--ca': ca = fs.readFileSync(rest[++i]); break;
    case '--prefix': prefix = rest[++i]; break;
    default: console.error('unknown argument ' + rest[i]); process.exit(2);
  }
}
let n = 0;
const uniq = (s) => `${prefix}-${s}-${process.pid}-${++n}`;
const topicOf = (s) => `conform/${uniq(s)}`;
const open = [];

// connect returns a connected client whose messages queue up in box from
// the start (a resumed session's messages may come with the CONNACK).
function connect(opts = {}) {
  const c = mqtt.connect(url, {
    protocolVersion: v5 ? 5 : 4, reconnectPeriod: 0, connectTimeout: 5000, clean: true,
    clientId: uniq('c'), ca, rejectUnauthorized: true, ...opts,
  });
  open.push(c);
  const q = [], waiters = [];
  c.on('message', (topic, payload, packet) => {
    const m = { topic, payload: payload.toString(), packet };
    const w = waiters.shift();
    if (w) w(m); else q.push(m);
  });
  c.box = {
    next(what = 'a message') {
      if (q.length) return Promise.resolve(q.shift());
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no ' + what + ' within 5s')), 5000);
        waiters.push((m) => { clearTimeout(t); resolve(m); });
      });
    },
  };
  return new Promise((resolve, reject) => {
    c.once('connect', (connack) => { c.connack = connack; resolve(c); });
    c.once('error', reject);
    c.once('close', () => reject(new Error('connection closed')));
  });
}
const end = (...cs) => Promise.all(cs.map((c) => c.endAsync()));
const expect = (ok, why) => { if (!ok) throw new Error(why); };

async function roundTrip(qos) {
  const t = topicOf('qos' + qos);
  const s = await connect();
  await s.subscribeAsync(t, { qos });
  const p = await connect();
  await p.publishAsync(t, 'qos ' + qos, { qos });
  const m = await s.box.next();
  expect(m.payload === 'qos ' + qos && m.packet.qos === qos, `got ${m.payload} at QoS ${m.packet.qos}`);
  await end(s, p);
}

const cases = {
  async connect() { await end(await connect()); },
  qos0: () => roundTrip(0),
  qos1: () => roundTrip(1),
  qos2: () => roundTrip(2),
  async retained() {
    const t = topicOf('retained');
    const p = await connect();
    await p.publishAsync(t, 'kept', { qos: 1, retain: true });
    const s = await connect();
    await s.subscribeAsync(t, { qos: 1 });
    const m = await s.box.next('the retained message');
    expect(m.payload === 'kept' && m.packet.retain, `got ${m.payload} retain=${m.packet.retain}`);
    await p.publishAsync(t, '', { qos: 1, retain: true });
    await end(s, p);
  },
  async will() {
    const t = topicOf('will');
    const s = await connect();
    await s.subscribeAsync(t, { qos: 1 });
    const w = await connect({ will: { topic: t, payload: Buffer.from('gone'), qos: 1, retain: false } });
    w.stream.destroy(); // no DISCONNECT: the will goes
    const m = await s.box.next('the will');
    expect(m.payload === 'gone', `got ${m.payload}`);
    await end(s);
  },
  async user_properties() {
    const t = topicOf('props');
    const s = await connect();
    await s.subscribeAsync(t, { qos: 1 });
    const p = await connect();
    await p.publishAsync(t, 'p', { qos: 1, properties: { userProperties: { site: 'north', unit: 'C' } } });
    const m = await s.box.next();
    const up = (m.packet.properties || {}).userProperties || {};
    expect(up.site === 'north' && up.unit === 'C', 'user properties ' + JSON.stringify(up));
    await end(s, p);
  },
  async request_response() {
    const req = topicOf('req'), resp = topicOf('resp');
    const r = await connect();
    r.on('message', (_t, _p, pk) => {
      const pr = pk.properties || {};
      if (pr.responseTopic) r.publish(pr.responseTopic, 'answer', { qos: 1, properties: { correlationData: pr.correlationData } });
    });
    await r.subscribeAsync(req, { qos: 1 });
    const q = await connect();
    await q.subscribeAsync(resp, { qos: 1 });
    await q.publishAsync(req, 'question', { qos: 1, properties: { responseTopic: resp, correlationData: Buffer.from('corr-42') } });
    const m = await q.box.next('the response');
    const cd = (m.packet.properties || {}).correlationData;
    expect(m.payload === 'answer' && cd && cd.toString() === 'corr-42', `got ${m.payload}, correlation ${cd}`);
    await end(r, q);
  },
  async shared() {
    const t = topicOf('shared'), marker = topicOf('marker');
    const subs = [await connect(), await connect()];
    for (const s of subs) {
      await s.subscribeAsync(`$share/g/${t}`, { qos: 1 });
      await s.subscribeAsync(marker, { qos: 1 });
    }
    const p = await connect();
    for (let i = 0; i < 10; i++) await p.publishAsync(t, 'm' + i, { qos: 1 });
    await p.publishAsync(marker, 'end', { qos: 1 });
    const seen = [];
    for (const s of subs) {
      for (;;) {
        const m = await s.box.next('the marker');
        if (m.topic === marker) break;
        seen.push(m.payload);
      }
    }
    expect(seen.length === 10 && new Set(seen).size === 10, 'received ' + JSON.stringify(seen.sort()));
    await end(...subs, p);
  },
  async subscription_id() {
    const t = topicOf('subid');
    const s = await connect();
    await s.subscribeAsync(t, { qos: 1, properties: { subscriptionIdentifier: 7 } });
    const p = await connect();
    await p.publishAsync(t, 'x', { qos: 1 });
    const m = await s.box.next();
    const id = (m.packet.properties || {}).subscriptionIdentifier;
    expect(id === 7 || (Array.isArray(id) && id.includes(7)), 'subscription identifier ' + JSON.stringify(id));
    await end(s, p);
  },
  async topic_alias() {
    const t = topicOf('alias');
    const s = await connect();
    await s.subscribeAsync(t, { qos: 1 });
    const p = await connect();
    expect(p.connack.properties && p.connack.properties.topicAliasMaximum > 0, 'no Topic Alias Maximum in CONNACK');
    await p.publishAsync(t, 'first', { qos: 1, properties: { topicAlias: 1 } });
    await p.publishAsync('', 'second', { qos: 1, properties: { topicAlias: 1 } });
    for (const want of ['first', 'second']) {
      const m = await s.box.next();
      expect(m.topic === t && m.payload === want, `got ${m.payload} on ${m.topic}`);
    }
    await end(s, p);
  },
  async message_expiry() {
    const t = topicOf('expiry');
    const p = await connect();
    await p.publishAsync(t, 'soon gone', { qos: 1, retain: true, properties: { messageExpiryInterval: 60 } });
    const s = await connect();
    await s.subscribeAsync(t, { qos: 1 });
    const m = await s.box.next('the retained message');
    const e = (m.packet.properties || {}).messageExpiryInterval;
    expect(e > 0 && e <= 60, 'message expiry interval ' + e);
    await p.publishAsync(t, '', { qos: 1, retain: true });
    await end(s, p);
  },
  async session_resume() {
    const t = topicOf('session'), id = uniq('persistent');
    const opts = { clientId: id, clean: false, properties: v5 ? { sessionExpiryInterval: 300 } : undefined };
    const s = await connect(opts);
    await s.subscribeAsync(t, { qos: 1 });
    await end(s);
    const p = await connect();
    await p.publishAsync(t, 'while away', { qos: 1 });
    const s2 = await connect(opts);
    expect(s2.connack.sessionPresent, 'session not present');
    const m = await s2.box.next('the queued message');
    expect(m.payload === 'while away', 'got ' + m.payload);
    await s2.unsubscribeAsync(t);
    await end(s2, p);
  },
};
const only5 = new Set(['user_properties', 'request_response', 'subscription_id', 'topic_alias', 'message_expiry']);

(async () => {
  let failed = 0;
  for (const [name, f] of Object.entries(cases)) {
    if (!v5 && only5.has(name)) { console.log(`${name} n/a`); continue; }
    try {
      await f();
      console.log(`${name} ok`);
    } catch (e) {
      failed++;
      console.log(`${name} fail: ${String(e && e.message || e).replace(/\n/g, ' ')}`);
    }
  }
  for (const c of open) c.end(true);
  process.exit(failed ? 1 : 0);
})();
