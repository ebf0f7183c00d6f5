// Administration: register a device (its secret shown once, with
// connection snippets), disable, delete and rotate devices. Users,
// tokens and the audit log are in accounts.js.

import { h, fill, copy } from './util.js';
import { post, patch, del, enc } from './api.js';
import { fleet } from './fleet.js';

export function registerView(main) {
  const id = h('input', { id: 'reg-id', placeholder: 'generated when empty', pattern: '[A-Za-z0-9._\\-]{1,128}', autocomplete: 'off' });
  const name = h('input', { id: 'reg-name', placeholder: 'Boiler room sensor', autocomplete: 'off' });
  const type = h('input', { id: 'reg-type', placeholder: 'sensor', autocomplete: 'off' });
  const labels = h('textarea', { id: 'reg-labels', rows: 3, placeholder: 'site=berlin\nfloor=2', spellcheck: false });
  const err = h('p', { class: 'error', role: 'alert' });
  const btn = h('button', { type: 'submit', id: 'reg-submit' }, 'Register');
  const form = h('form', { class: 'panel form', id: 'register-form' },
    h('div', { class: 'row' }, h('label', {}, 'Device id', id), h('label', {}, 'Name', name), h('label', {}, 'Type', type)),
    h('label', {}, 'Labels (one key=value a line)', labels), err, h('div', {}, btn));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    const body = { name: name.value.trim(), type: type.value.trim(), labels: {} };
    if (id.value.trim()) body.id = id.value.trim();
    for (const line of labels.value.split('\n')) {
      if (!line.trim()) continue;
      const [k, ...v] = line.split('=');
      body.labels[k.trim()] = v.join('=').trim();
    }
    btn.disabled = true;
    try {
      const d = await post('/devices', body);
      const { secret, ...dev } = d;
      fleet.put(dev);
      form.reset();
      secretDialog(dev, secret, 'Device registered', () => { location.hash = '#/devices/' + enc(dev.id); });
    } catch (e) { err.textContent = e.message; }
    finally { btn.disabled = false; }
  });
  main.append(h('div', { class: 'head' }, h('div', {}, h('h1', { text: 'Register a device' }),
    h('p', { class: 'muted small', text: 'The device connects with client id = user name = its id, and the secret shown once after registering.' }))), form);
}

// deviceActions are an admin's buttons on the device page.
export function deviceActions(dev, changed) {
  const toggle = h('button', { class: 'ghost', type: 'button', id: 'dev-toggle' }, dev.enabled === false ? 'Enable' : 'Disable');
  toggle.addEventListener('click', async () => {
    const enable = dev.enabled === false;
    if (!enable && !confirm(`Disable ${dev.id}? It is disconnected and refused until enabled again.`)) return;
    try {
      const d = await patch('/devices/' + enc(dev.id), { enabled: enable });
      Object.assign(dev, d);
      fleet.put(dev);
      toggle.textContent = dev.enabled === false ? 'Enable' : 'Disable';
      changed(dev);
    } catch (e) { alert(e.message); }
  });
  const rotate = h('button', { class: 'ghost', type: 'button', id: 'dev-rotate' }, 'Rotate secret');
  rotate.addEventListener('click', async () => {
    if (!confirm(`Issue a new secret for ${dev.id}? The old one stops working at once.`)) return;
    try {
      const { secret, ...d } = await post(`/devices/${enc(dev.id)}/secret`);
      secretDialog(d, secret, 'New secret issued');
    } catch (e) { alert(e.message); }
  });
  const remove = h('button', { class: 'danger', type: 'button', id: 'dev-delete' }, 'Delete');
  remove.addEventListener('click', async () => {
    if (!confirm(`Delete ${dev.id}? Its history, commands and twin go with it.`)) return;
    try {
      await del('/devices/' + enc(dev.id));
      fleet.remove(dev.id);
      location.hash = '#/devices';
    } catch (e) { alert(e.message); }
  });
  return [toggle, rotate, remove];
}

// secretDialog shows a device's secret, the one time it exists in clear,
// with ways to connect.
export function secretDialog(dev, secret, heading, onClose) {
  const dlg = document.getElementById('dialog');
  const secure = location.protocol === 'https:';
  const host = location.hostname;
  const tcpPort = secure ? 8883 : 1883;
  const wsURL = (secure ? 'wss://' : 'ws://') + location.host + '/mqtt';
  const sh = (s) => "'" + String(s).replaceAll("'", "'\\''") + "'";
  const py = (s) => JSON.stringify(String(s));
  const topic = `devices/${dev.id}/telemetry`;
  const snippets = [
    // cert.pem: what `tether certs dev` writes (a public CA's certificate
    // needs no --cafile).
    ['mosquitto_pub', `mosquitto_pub -h ${host} -p ${tcpPort}${secure ? ' --cafile cert.pem' : ''} -V mqttv5 \\\n  -i ${sh(dev.id)} -u ${sh(dev.id)} -P ${sh(secret)} \\\n  -t ${sh(topic)} -m '{"temperature": 21.5}'`],
    // Runs on paho-mqtt 1.x (Debian's 1.6) and 2.x, which wants a callback API version.
    ['Python (paho-mqtt 1.x or 2.x)', `import json, paho.mqtt.client as mqtt\n\nv2 = (mqtt.CallbackAPIVersion.VERSION2,) if hasattr(mqtt, "CallbackAPIVersion") else ()\nc = mqtt.Client(*v2, client_id=${py(dev.id)}, protocol=mqtt.MQTTv5)\nc.username_pw_set(${py(dev.id)}, ${py(secret)})\n${secure ? 'c.tls_set(ca_certs="cert.pem")\n' : ''}c.connect(${py(host)}, ${tcpPort})\nc.loop_start()\nc.publish(${py(topic)}, json.dumps({"temperature": 21.5}), qos=1).wait_for_publish()\nc.disconnect()\nc.loop_stop()`],
    ['MQTT.js', `import mqtt from 'mqtt'\n\nconst c = mqtt.connect(${py(wsURL)}, {\n  protocolVersion: 5,\n  clientId: ${py(dev.id)},\n  username: ${py(dev.id)},\n  password: ${py(secret)},\n})\nc.on('connect', () => {\n  c.publish(${py(topic)}, JSON.stringify({ temperature: 21.5 }), { qos: 1 })\n  c.subscribe(${py(`devices/${dev.id}/commands/#`)})\n})`],
  ];
  const close = h('button', { type: 'button', id: 'secret-close' }, 'I have stored the secret');
  const copySecret = h('button', { class: 'ghost small', type: 'button' }, 'Copy');
  copySecret.addEventListener('click', () => copy(secret, copySecret));
  fill(dlg,
    h('h2', { text: heading }),
    h('p', {}, 'Device ', h('code', { text: dev.id }), '. Its secret is shown ', h('strong', { text: 'this once' }), ' — Tether keeps only a hash.'),
    h('div', { class: 'row' }, h('div', { class: 'secret mono', id: 'device-secret', text: secret }), copySecret),
    snippets.map(([title, code]) => {
      const b = h('button', { class: 'ghost small', type: 'button' }, 'Copy');
      b.addEventListener('click', () => copy(code, b));
      return [h('h3', { class: 'small', text: title }), h('div', { class: 'snippet' }, h('pre', { text: code }), b)];
    }),
    h('p', { class: 'actions' }, close));
  close.addEventListener('click', () => dlg.close());
  dlg.addEventListener('close', () => { fill(dlg); if (onClose) onClose(); }, { once: true });
  dlg.showModal();
}
