// The dashboard's MQTT connection: MQTT.js over /mqtt (wss when the page
// is https), the session token as password. Views subscribe with
// live.on(filter, handler); the subscriptions are counted, and made again
// after every reconnect (a broker restart), so views never notice.

import { topicMatch } from './util.js';

const decoder = new TextDecoder();
// Subscriptions keep the publisher's retain flag (retain as published),
// so that the topic explorer can flag retained messages as they come.
const SUB_OPTS = { qos: 0, rap: true };

class Live {
  constructor() {
    this.client = null;
    this.state = 'offline';   // connecting | online | offline
    this.subs = new Map();    // filter -> Set of handlers
    this.stateFns = new Set();
    this.onRefused = () => {};
    this.received = 0;        // messages received, for the measurements
    this.connects = 0;        // successful connects (reconnects after the first)
    this.lastClose = '';      // why the last connection ended, when the broker said
    this.reason = '';         // why the connection cannot be made, when the server said (see diagnose)
    this.failures = 0;        // attempts in a row that ended before CONNACK
    this.probing = false;
  }

  connect(s) {
    this.close();
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/mqtt';
    this.setState('connecting');
    const client = window.mqtt.connect(url, {
      protocolVersion: 5,
      clientId: 'dashboard-' + s.username + '-' + Math.random().toString(36).slice(2, 10),
      username: s.username,
      password: s.token,
      clean: true,
      // A background tab runs timers about once a minute. MQTT.js sends
      // PINGREQ on the second tick of a keepalive/2 timer, each tick up to
      // a minute late there: within 300 + 120 s, inside the broker's
      // 1.5 x 300 = 450 s. (Under 60 s the connection drops.)
      keepalive: 300,
      reconnectPeriod: 2000,
      connectTimeout: 10000,
      resubscribe: false, // done here, from this.subs, on every connect
      // MQTT.js's default ("auto") runs its keepalive timer in a Worker
      // made from a blob: URL, which the page's CSP forbids; without
      // PINGREQs the broker closes the connection after 1.5 keepalives.
      timerVariant: 'native',
    });
    this.client = client;
    let connected = false;
    client.on('connect', () => {
      connected = true;
      this.connects++;
      this.failures = 0;
      this.setReason('');
      this.setState('online');
      const filters = [...this.subs.keys()];
      if (filters.length) client.subscribe(filters, { ...SUB_OPTS });
    });
    client.on('reconnect', () => this.setState('connecting'));
    client.on('disconnect', (pk) => { this.lastClose = 'DISCONNECT reason ' + (pk && pk.reasonCode); });
    client.on('close', () => {
      if (this.client !== client) return;
      if (!connected) { this.failures++; this.diagnose(); }
      connected = false;
      this.setState(client.reconnecting ? 'connecting' : 'offline');
    });
    client.on('offline', () => this.setState('offline'));
    client.on('error', (err) => {
      // CONNACK refusals: MQTT 5 0x86 bad user name or password, 0x87 not
      // authorized; 3.1.1 return codes 4 and 5. The token is no good.
      if ([134, 135, 4, 5].includes(err && err.code)) {
        this.close();
        this.onRefused(err);
      }
    });
    client.on('message', (topic, payload, packet) => this.dispatch(topic, payload, packet));
  }

  // diagnose asks the server why the WebSocket failed: a browser does not
  // show a page the status of a refused upgrade. GET /mqtt?origin=O says
  // whether a page of origin O is let in, and if not why and which
  // setting would allow it.
  async diagnose() {
    if (this.probing) return;
    this.probing = true;
    try {
      const res = await fetch('/mqtt?origin=' + encodeURIComponent(location.origin), { cache: 'no-store', credentials: 'omit' });
      let body = null;
      try { body = await res.json(); } catch (e) { /* not Tether's answer */ }
      if (body && body.ok === false) {
        this.setReason('The server refuses this page\'s connection: ' + body.message + (body.setting ? ' (setting: ' + body.setting + ')' : ''));
      } else if (body && body.ok && this.failures >= 2) {
        this.setReason('The WebSocket connection to /mqtt fails although the server accepts this page: a proxy in between must pass WebSocket upgrades (see deploy/ in Tether\'s repository).');
      } else if (!body && this.failures >= 2) {
        this.setReason('The connection to /mqtt fails; the server answered ' + res.status + ' ' + res.statusText + '.');
      }
    } catch (e) {
      this.setReason(''); // the server is unreachable: a restart, or the network; keep trying
    } finally {
      this.probing = false;
    }
  }

  setReason(r) {
    if (r === this.reason) return;
    this.reason = r;
    for (const f of this.stateFns) f(this.state);
  }

  dispatch(topic, payload, packet) {
    this.received++;
    let text = null;
    for (const [filter, handlers] of this.subs) {
      if (!topicMatch(filter, topic)) continue;
      if (text === null) text = decoder.decode(payload);
      for (const f of handlers) {
        try { f(topic, text, packet); } catch (e) { console.error('handler for', filter, e); }
      }
    }
  }

  // on subscribes handler to filter and returns the function that undoes it.
  on(filter, handler) {
    let set = this.subs.get(filter);
    if (!set) {
      set = new Set();
      this.subs.set(filter, set);
      if (this.client && this.client.connected) this.client.subscribe(filter, { ...SUB_OPTS });
    }
    set.add(handler);
    return () => {
      set.delete(handler);
      if (set.size === 0 && this.subs.get(filter) === set) {
        this.subs.delete(filter);
        if (this.client && this.client.connected) this.client.unsubscribe(filter);
      }
    };
  }

  onState(f) { this.stateFns.add(f); f(this.state); return () => this.stateFns.delete(f); }

  setState(s) {
    if (s === this.state) return;
    this.state = s;
    for (const f of this.stateFns) f(s);
  }

  close() {
    if (this.client) {
      const c = this.client;
      this.client = null;
      c.end(true);
    }
    this.failures = 0;
    this.setReason('');
    this.setState('offline');
  }
}

export const live = new Live();
window.tetherLive = live; // for the browser tests and measurements
