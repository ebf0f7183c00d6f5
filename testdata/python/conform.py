"""The conformance cases for Python paho-mqtt 1.x (Debian's python3-paho-mqtt),
for cmd/tether/e2e_conform_test.go:

    /usr/bin/python3 conform.py HOST PORT TRANSPORT [--v5] [--tls CAFILE] [--prefix P]

TRANSPORT is tcp or websockets (path /mqtt). Prints one line per case:
"CASE ok", "CASE n/a" (not in this MQTT version) or "CASE fail: REASON";
exits 0 when none failed.
"""
import os
import queue
import socket
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

args = sys.argv[1:]
host, port, transport = args[0], int(args[1]), args[2]
v5 = "--v5" in args
ca = args[args.index("--tls") + 1] if "--tls" in args else None
prefix = args[args.index("--prefix") + 1] if "--prefix" in args else "conform-py"
counter = [0]
clients = []


def uniq(s):
    counter[0] += 1
    return "%s-%s-%d-%d" % (prefix, s, os.getpid(), counter[0])


def topic_of(s):
    return "conform/" + uniq(s)


class Failed(Exception):
    pass


def expect(ok, why):
    if not ok:
        raise Failed(why)


class Client:
    """A connected client whose messages queue up from the start."""

    def __init__(self, client_id=None, clean=True, will=None, session_expiry=None):
        self.box = queue.Queue()
        self.acks = {}
        self.connected = queue.Queue()
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        cid = client_id or uniq("c")
        if v5:
            self.c = mqtt.Client(client_id=cid, protocol=proto, transport=transport)
        else:
            self.c = mqtt.Client(client_id=cid, clean_session=clean, protocol=proto, transport=transport)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if ca:
            self.c.tls_set(ca_certs=ca)
        if will:
            self.c.will_set(will[0], will[1], qos=1)
        self.c.on_message = lambda c, u, m: self.box.put(m)
        self.c.on_connect = self._on_connect
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if session_expiry:
                props.SessionExpiryInterval = session_expiry
        kw = {"clean_start": clean, "properties": props} if v5 else {}
        self.c.connect(host, port, keepalive=30, **kw)
        self.c.loop_start()
        clients.append(self)
        rc, flags, cprops = self.connected.get(timeout=5)
        expect(rc == 0, "CONNACK %s" % rc)
        self.session_present = flags.get("session present", 0) == 1
        self.connack = cprops

    def _on_connect(self, c, u, flags, rc, props=None):
        self.connected.put((rc if isinstance(rc, int) else rc.value, flags, props))

    def subscribe(self, t, qos=1, sub_id=None):
        props = None
        if sub_id:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        done = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, granted, *rest: done.put(granted)
        if v5:
            rc, _ = self.c.subscribe(t, qos=qos, properties=props)
        else:
            rc, _ = self.c.subscribe(t, qos=qos)
        expect(rc == mqtt.MQTT_ERR_SUCCESS, "subscribe rc %s" % rc)
        granted = done.get(timeout=5)
        code = granted[0] if isinstance(granted[0], int) else granted[0].value
        expect(code < 0x80, "SUBACK %s" % code)

    def publish(self, t, payload, qos=1, retain=False, props=None):
        info = self.c.publish(t, payload, qos=qos, retain=retain, properties=props) if v5 else \
            self.c.publish(t, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=5)
        expect(info.is_published(), "publish to %s not acknowledged" % t)

    def next(self, what="a message"):
        try:
            return self.box.get(timeout=5)
        except queue.Empty:
            raise Failed("no %s within 5s" % what)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def pub_props(**kw):
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def round_trip(qos):
    t = topic_of("qos%d" % qos)
    s = Client()
    s.subscribe(t, qos)
    p = Client()
    p.publish(t, "qos %d" % qos, qos)
    m = s.next()
    expect(m.payload == b"qos %d" % qos and m.qos == qos, "got %r at QoS %d" % (m.payload, m.qos))
    s.close(); p.close()


def case_connect():
    Client().close()


def case_retained():
    t = topic_of("retained")
    p = Client()
    p.publish(t, "kept", retain=True)
    s = Client()
    s.subscribe(t)
    m = s.next("the retained message")
    expect(m.payload == b"kept" and m.retain, "got %r retain=%s" % (m.payload, m.retain))
    p.publish(t, "", retain=True)
    s.close(); p.close()


def case_will():
    t = topic_of("will")
    s = Client()
    s.subscribe(t)
    w = Client(will=(t, "gone"))
    w.c.loop_stop()
    sock = w.c.socket()
    raw = getattr(sock, "_socket", sock)  # under a WebSocket, the socket
    raw.shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the will goes
    raw.close()
    m = s.next("the will")
    expect(m.payload == b"gone", "got %r" % m.payload)
    s.close()


def case_user_properties():
    t = topic_of("props")
    s = Client()
    s.subscribe(t)
    p = Client()
    p.publish(t, "p", props=pub_props(UserProperty=[("site", "north"), ("unit", "C")]))
    m = s.next()
    up = dict(getattr(m.properties, "UserProperty", []) or [])
    expect(up.get("site") == "north" and up.get("unit") == "C", "user properties %r" % up)
    s.close(); p.close()


def case_request_response():
    req, resp = topic_of("req"), topic_of("resp")
    r = Client()

    def answer(c, u, m):
        rt = getattr(m.properties, "ResponseTopic", None)
        if rt:
            c.publish(rt, "answer", qos=1, properties=pub_props(CorrelationData=m.properties.CorrelationData))
    r.c.on_message = answer
    r.subscribe(req)
    q = Client()
    q.subscribe(resp)
    q.publish(req, "question", props=pub_props(ResponseTopic=resp, CorrelationData=b"corr-42"))
    m = q.next("the response")
    cd = getattr(m.properties, "CorrelationData", None)
    expect(m.payload == b"answer" and cd == b"corr-42", "got %r, correlation %r" % (m.payload, cd))
    r.close(); q.close()


def case_shared():
    t, marker = topic_of("shared"), topic_of("marker")
    subs = [Client(), Client()]
    for s in subs:
        s.subscribe("$share/g/" + t)
        s.subscribe(marker)
    p = Client()
    for i in range(10):
        p.publish(t, "m%d" % i)
    p.publish(marker, "end")
    seen = []
    for s in subs:
        while True:
            m = s.next("the marker")
            if m.topic == marker:
                break
            seen.append(m.payload)
    expect(len(seen) == 10 and len(set(seen)) == 10, "received %r" % sorted(seen))
    for s in subs:
        s.close()
    p.close()


def case_subscription_id():
    t = topic_of("subid")
    s = Client()
    s.subscribe(t, sub_id=7)
    p = Client()
    p.publish(t, "x")
    m = s.next()
    ids = getattr(m.properties, "SubscriptionIdentifier", None)
    expect(ids == 7 or (isinstance(ids, list) and 7 in ids), "subscription identifier %r" % ids)
    s.close(); p.close()


def case_topic_alias():
    t = topic_of("alias")
    s = Client()
    s.subscribe(t)
    p = Client()
    expect(getattr(p.connack, "TopicAliasMaximum", 0) > 0, "no Topic Alias Maximum in CONNACK")
    p.publish(t, "first", props=pub_props(TopicAlias=1))
    p.publish("", "second", props=pub_props(TopicAlias=1))
    for want in (b"first", b"second"):
        m = s.next()
        expect(m.topic == t and m.payload == want, "got %r on %s" % (m.payload, m.topic))
    s.close(); p.close()


def case_message_expiry():
    t = topic_of("expiry")
    p = Client()
    p.publish(t, "soon gone", retain=True, props=pub_props(MessageExpiryInterval=60))
    s = Client()
    s.subscribe(t)
    m = s.next("the retained message")
    e = getattr(m.properties, "MessageExpiryInterval", None)
    expect(e is not None and 0 < e <= 60, "message expiry interval %r" % e)
    p.publish(t, "", retain=True)
    s.close(); p.close()


def case_session_resume():
    t, cid = topic_of("session"), uniq("persistent")
    s = Client(client_id=cid, clean=False, session_expiry=300)
    s.subscribe(t)
    s.close()
    p = Client()
    p.publish(t, "while away")
    s2 = Client(client_id=cid, clean=False, session_expiry=300)
    expect(s2.session_present, "session not present")
    m = s2.next("the queued message")
    expect(m.payload == b"while away", "got %r" % m.payload)
    s2.c.unsubscribe(t)
    s2.close(); p.close()


CASES = [
    ("connect", case_connect), ("qos0", lambda: round_trip(0)), ("qos1", lambda: round_trip(1)),
    ("qos2", lambda: round_trip(2)), ("retained", case_retained), ("will", case_will),
    ("user_properties", case_user_properties), ("request_response", case_request_response),
    ("shared", case_shared), ("subscription_id", case_subscription_id), ("topic_alias", case_topic_alias),
    ("message_expiry", case_message_expiry), ("session_resume", case_session_resume),
]
ONLY5 = {"user_properties", "request_response", "subscription_id", "topic_alias", "message_expiry"}

failed = 0
for name, f in CASES:
    if not v5 and name in ONLY5:
        print(name, "n/a", flush=True)
        continue
    try:
        f()
        print(name, "ok", flush=True)
    except Exception as e:  # any failure is the case's, reported and counted
        failed += 1
        print("%s fail: %s" % (name, str(e).replace("\n", " ") or type(e).__name__), flush=True)
for c in clients:
    try:
        c.c.loop_stop()
    except Exception:
        pass
sys.exit(1 if failed else 0)
