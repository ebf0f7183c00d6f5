// A Tether device in Node.js with MQTT.js (npm install mqtt), over
// WebSocket or TCP: it answers commands and publishes a reading every 5 s.
//
//   MQTT_URL=ws://localhost:8080/mqtt DEVICE_ID=th-1 SECRET=... node device.js
//
// MQTT_URL may be ws://, wss://, mqtt:// or mqtts://; CA_FILE is the
// certificate to trust for wss/mqtts (cert.pem from `tether certs dev`);
// COUNT=n stops after n readings (default: run until Ctrl-C).
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const url = process.env.MQTT_URL || 'ws://localhost:8080/mqtt';
const id = process.env.DEVICE_ID || 'th-1';
const count = Number(process.env.COUNT || 0);

const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: id,          // a device's client id is its id...
  username: id,          // ...and so is its user name
  password: process.env.SECRET,
  clean: false,          // keep the session: commands sent while offline wait in it
  properties: { sessionExpiryInterval: 3600 },
  ca: process.env.CA_FILE ? fs.readFileSync(process.env.CA_FILE) : undefined,
});
client.on('error', (err) => { console.error('mqtt:', err.message); process.exit(1); });

client.on('connect', () => client.subscribe(`devices/${id}/commands/#`, { qos: 1 }));
client.on('message', (topic, payload) => {
  const cmd = JSON.parse(payload.toString()); // {"id","params","ts"}
  console.log('command', topic.split('/').pop(), JSON.stringify(cmd.params));
  const answer = { status: 'ok', result: { done: true } };
  client.publish(`devices/${id}/responses/${cmd.id}`, JSON.stringify(answer), { qos: 1 });
});

let sent = 0;
function publish() {
  const reading = { temp: Math.round((20 + Math.random() * 5) * 10) / 10 };
  client.publish(`devices/${id}/telemetry`, JSON.stringify(reading), { qos: 1 }, (err) => {
    if (err) { console.error('publish:', err.message); process.exit(1); }
    console.log('published', JSON.stringify(reading));
    if (count && ++sent >= count) { client.end(); return; }
    setTimeout(publish, 5000);
  });
}
client.once('connect', publish);
