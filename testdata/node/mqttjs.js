// A tiny MQTT.js command line for Tether's interoperability tests.
//
//   node mqttjs.js pub URL TOPIC MESSAGE [--ca FILE] [--qos N] [--v5]
//   node mqttjs.js sub URL TOPIC [--ca FILE] [--qos N] [--v5] [--count N]
//
// sub prints "subscribed" once the broker has acknowledged the
// subscription, then one line per message: the payload. It exits after
// --count messages (default 1). Any error exits 1 with the reason.
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const [mode, url, topic, ...rest] = process.argv.slice(2);
const opts = { qos: 0, count: 1, v5: false, ca: null, message: null };
for (let i = 0; i < rest.length; i++) {
  switch (rest[i]) {
    case '--ca': opts.ca = fs.readFileSync(rest[++i]); break;
    case '--qos': opts.qos = Number(rest[++i]); break;
    case '--count': opts.count = Number(rest[++i]); break;
    case '--v5': opts.v5 = true; break;
    default: opts.message = rest[i];
  }
}
if (!['pub', 'sub'].includes(mode) || !url || !topic) {
  console.error('usage: mqttjs.js pub|sub URL TOPIC [MESSAGE] [--ca FILE] [--qos N] [--v5] [--count N]');
  process.exit(2);
}

const client = mqtt.connect(url, {
  protocolVersion: opts.v5 ? 5 : 4,
  clientId: `mqttjs-${mode}-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
  ca: opts.ca || undefined,
  rejectUnauthorized: true,
});
const fail = (err) => { console.error(String(err && err.message || err)); process.exit(1); };
client.on('error', fail);
setTimeout(() => fail('timed out'), 20000).unref();

client.on('connect', () => {
  if (mode === 'pub') {
    client.publish(topic, opts.message || '', { qos: opts.qos }, (err) => {
      if (err) fail(err);
      client.end(false, () => process.exit(0));
    });
    return;
  }
  let left = opts.count;
  client.on('message', (_topic, payload) => {
    process.stdout.write(payload.toString() + '\n');
    if (--left === 0) client.end(false, () => process.exit(0));
  });
  client.subscribe(topic, { qos: opts.qos }, (err, granted) => {
    if (err) fail(err);
    if (!granted || granted[0].qos >= 128) fail('subscription refused');
    process.stdout.write('subscribed\n');
  });
});
