"""A Tether device in Python with paho-mqtt 1.x (Debian's python3-paho-mqtt
is 1.6) or 2.x, over TCP or WebSocket: it answers commands and publishes a
reading every 5 s.

  MQTT_URL=tcp://localhost:1883 DEVICE_ID=th-1 SECRET=... python3 device.py
  MQTT_URL=ws://localhost:8080/mqtt DEVICE_ID=th-1 SECRET=... python3 device.py

MQTT_URL may be tcp://, tls://, ws:// or wss://; CA_FILE is the certificate
to trust for tls/wss (cert.pem from `tether certs dev`); COUNT=n stops
after n readings (default: run until Ctrl-C).
"""
import json
import os
import random
import sys
import threading
import time
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

url = urlparse(os.environ.get("MQTT_URL", "tcp://localhost:1883"))
device = os.environ.get("DEVICE_ID", "th-1")
count = int(os.environ.get("COUNT", "0"))
secure = url.scheme in ("tls", "mqtts", "ssl", "wss")
transport = "websockets" if url.scheme in ("ws", "wss") else "tcp"
port = url.port or {"tcp": 1883, "mqtt": 1883, "tls": 8883, "mqtts": 8883, "ssl": 8883, "ws": 8080, "wss": 8443}[url.scheme]

# paho-mqtt 2.x wants the callback API version first; 1.x has no such argument.
v2 = (mqtt.CallbackAPIVersion.VERSION2,) if hasattr(mqtt, "CallbackAPIVersion") else ()
# A device's client id is its id, and so is its user name. A persistent
# session (clean_session=False) keeps commands sent while it is offline.
c = mqtt.Client(*v2, client_id=device, clean_session=False, transport=transport)
c.username_pw_set(device, os.environ["SECRET"])
if transport == "websockets":
    c.ws_set_options(path=url.path or "/mqtt")
if secure:
    c.tls_set(ca_certs=os.environ.get("CA_FILE"))

connected = threading.Event()
refused = []


def on_connect(client, userdata, flags, rc, properties=None):  # 1.x passes 4 arguments, 2.x 5
    failed = rc.is_failure if hasattr(rc, "is_failure") else rc != 0
    if failed:
        refused.append(str(rc))
    else:
        client.subscribe(f"devices/{device}/commands/#", qos=1)
    connected.set()


def on_message(client, userdata, msg):
    cmd = json.loads(msg.payload)  # {"id", "params", "ts"}
    print("command", msg.topic.rsplit("/", 1)[-1], json.dumps(cmd.get("params")))
    answer = {"status": "ok", "result": {"done": True}}
    client.publish(f"devices/{device}/responses/{cmd['id']}", json.dumps(answer), qos=1)


c.on_connect = on_connect
c.on_message = on_message
c.connect(url.hostname, port)
c.loop_start()
if not connected.wait(10) or refused:
    sys.exit(f"connect to {url.geturl()}: {refused[0] if refused else 'no answer'}")

sent = 0
while True:
    reading = {"temp": round(20 + random.random() * 5, 1)}
    c.publish(f"devices/{device}/telemetry", json.dumps(reading), qos=1).wait_for_publish()
    print("published", json.dumps(reading))
    sent += 1
    if count and sent >= count:
        break
    time.sleep(5)
c.disconnect()
c.loop_stop()
