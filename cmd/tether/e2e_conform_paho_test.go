package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// The matrix's paho Go rows: paho.mqtt.golang (3.1.1) and paho.golang (5)
// behind one small interface, running the cases of conformGoCases.

// cprops are the MQTT 5 properties the cases use.
type cprops struct {
	user      map[string]string
	respTopic string
	corr      string
	alias     uint16
	expiry    uint32
	subIDs    []int
}

// cmsg is a message a conformance client received.
type cmsg struct {
	topic, payload string
	qos            byte
	retain         bool
	props          cprops
}

// copts are how a conformance client connects.
type copts struct {
	id         string
	persistent bool // clean session false; MQTT 5: session expiry 300 s
	willTopic  string
}

type cclient interface {
	sub(t *testing.T, filter string, qos byte, subID int)
	pub(t *testing.T, topic, payload string, qos byte, retain bool, p *cprops)
	next(t *testing.T, what string) cmsg
	drop()  // closes the connection without DISCONNECT
	close() // DISCONNECT
	sessionPresent() bool
	aliasMax() uint16
}

var cseq atomic.Int64

func cuniq(s string) string { return fmt.Sprintf("go-%s-%d", s, cseq.Add(1)) }

func conformPahoGo(t *testing.T, e *conformEnv) {
	for _, v5 := range []bool{false, true} {
		for _, tr := range conformTransports {
			row := fmt.Sprintf("paho-go / %s / %s", versionName(v5), tr)
			dial := func(t *testing.T, o copts) cclient {
				if o.id == "" {
					o.id = cuniq("c")
				}
				if v5 {
					return dialPaho5(t, e, tr, o)
				}
				return dialPaho3(t, e, tr, o)
			}
			t.Run(versionName(v5)+"-"+tr, func(t *testing.T) {
				for _, c := range conformCases {
					e.runCase(t, row, v5, c, func(t *testing.T) { conformGoCase(t, c, dial) })
				}
			})
		}
	}
}

// conformGoCase is one case of the matrix, for any cclient.
func conformGoCase(t *testing.T, c string, dial func(*testing.T, copts) cclient) {
	topic := "conform/" + cuniq(c)
	roundTrip := func(qos byte) {
		s := dial(t, copts{})
		s.sub(t, topic, qos, 0)
		p := dial(t, copts{})
		p.pub(t, topic, "payload", qos, false, nil)
		if m := s.next(t, "the message"); m.payload != "payload" || m.qos != qos {
			t.Fatalf("got %+v, want QoS %d", m, qos)
		}
	}
	switch c {
	case "connect":
		dial(t, copts{}).close()
	case "qos0":
		roundTrip(0)
	case "qos1":
		roundTrip(1)
	case "qos2":
		roundTrip(2)
	case "retained":
		p := dial(t, copts{})
		p.pub(t, topic, "kept", 1, true, nil)
		s := dial(t, copts{})
		s.sub(t, topic, 1, 0)
		if m := s.next(t, "the retained message"); m.payload != "kept" || !m.retain {
			t.Fatalf("got %+v", m)
		}
		p.pub(t, topic, "", 1, true, nil)
	case "will":
		s := dial(t, copts{})
		s.sub(t, topic, 1, 0)
		dial(t, copts{willTopic: topic}).drop()
		if m := s.next(t, "the will"); m.payload != "gone" {
			t.Fatalf("got %+v", m)
		}
	case "user_properties":
		s := dial(t, copts{})
		s.sub(t, topic, 1, 0)
		dial(t, copts{}).pub(t, topic, "p", 1, false, &cprops{user: map[string]string{"site": "north", "unit": "C"}})
		if m := s.next(t, "the message"); m.props.user["site"] != "north" || m.props.user["unit"] != "C" {
			t.Fatalf("user properties %v", m.props.user)
		}
	case "request_response":
		resp := topic + "/resp"
		r := dial(t, copts{})
		r.sub(t, topic, 1, 0)
		q := dial(t, copts{})
		q.sub(t, resp, 1, 0)
		q.pub(t, topic, "question", 1, false, &cprops{respTopic: resp, corr: "corr-42"})
		req := r.next(t, "the request")
		if req.props.respTopic != resp {
			t.Fatalf("request without its response topic: %+v", req)
		}
		r.pub(t, req.props.respTopic, "answer", 1, false, &cprops{corr: req.props.corr})
		if m := q.next(t, "the response"); m.payload != "answer" || m.props.corr != "corr-42" {
			t.Fatalf("got %+v", m)
		}
	case "shared":
		marker := topic + "/marker"
		subs := []cclient{dial(t, copts{}), dial(t, copts{})}
		for _, s := range subs {
			s.sub(t, "$share/g/"+topic, 1, 0)
			s.sub(t, marker, 1, 0)
		}
		p := dial(t, copts{})
		for i := range 10 {
			p.pub(t, topic, fmt.Sprint("m", i), 1, false, nil)
		}
		p.pub(t, marker, "end", 1, false, nil)
		var seen []string
		for _, s := range subs {
			for m := s.next(t, "the marker"); m.topic != marker; m = s.next(t, "the marker") {
				seen = append(seen, m.payload)
			}
		}
		sort.Strings(seen)
		if len(seen) != 10 || len(dedupe(seen)) != 10 {
			t.Fatalf("the group received %v", seen)
		}
	case "subscription_id":
		s := dial(t, copts{})
		s.sub(t, topic, 1, 7)
		dial(t, copts{}).pub(t, topic, "x", 1, false, nil)
		if m := s.next(t, "the message"); len(m.props.subIDs) != 1 || m.props.subIDs[0] != 7 {
			t.Fatalf("subscription identifiers %v", m.props.subIDs)
		}
	case "topic_alias":
		s := dial(t, copts{})
		s.sub(t, topic, 1, 0)
		p := dial(t, copts{})
		if p.aliasMax() == 0 {
			t.Fatal("no Topic Alias Maximum in CONNACK")
		}
		p.pub(t, topic, "first", 1, false, &cprops{alias: 1})
		p.pub(t, "", "second", 1, false, &cprops{alias: 1})
		for _, want := range []string{"first", "second"} {
			if m := s.next(t, want); m.topic != topic || m.payload != want {
				t.Fatalf("got %+v, want %s on %s", m, want, topic)
			}
		}
	case "message_expiry":
		p := dial(t, copts{})
		p.pub(t, topic, "soon gone", 1, true, &cprops{expiry: 60})
		s := dial(t, copts{})
		s.sub(t, topic, 1, 0)
		if m := s.next(t, "the retained message"); m.props.expiry == 0 || m.props.expiry > 60 {
			t.Fatalf("message expiry interval %d", m.props.expiry)
		}
		p.pub(t, topic, "", 1, true, nil)
	case "session_resume":
		id := cuniq("persistent")
		s := dial(t, copts{id: id, persistent: true})
		s.sub(t, topic, 1, 0)
		s.close()
		dial(t, copts{}).pub(t, topic, "while away", 1, false, nil)
		s = dial(t, copts{id: id, persistent: true})
		if !s.sessionPresent() {
			t.Fatal("session not present")
		}
		if m := s.next(t, "the queued message"); m.payload != "while away" {
			t.Fatalf("got %+v", m)
		}
	default:
		t.Fatalf("no case %s", c)
	}
}

func dedupe(s []string) []string {
	out := s[:0:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func nextMsg(t *testing.T, box chan cmsg, what string) cmsg {
	t.Helper()
	select {
	case m := <-box:
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s within 5s", what)
	}
	return cmsg{}
}

// --- paho.mqtt.golang, MQTT 3.1.1 ---

type pahoGo3 struct {
	c       paho3.Client
	box     chan cmsg
	conn    atomic.Value
	present bool
}

func dialPaho3(t *testing.T, e *conformEnv, tr string, o copts) cclient {
	t.Helper()
	broker := map[string]string{"tcp": "tcp://" + e.tcp, "tls": "ssl://" + e.tls, "ws": "ws://" + e.ws + "/mqtt", "wss": "wss://" + e.wss + "/mqtt"}[tr]
	c := &pahoGo3{box: make(chan cmsg, 100)}
	opts := paho3.NewClientOptions().AddBroker(broker).SetClientID(o.id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(!o.persistent).SetOrderMatters(true).
		SetConnectTimeout(5 * time.Second).SetKeepAlive(30 * time.Second).SetTLSConfig(e.tlsConfig()).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) {
			c.box <- cmsg{topic: m.Topic(), payload: string(m.Payload()), qos: m.Qos(), retain: m.Retained()}
		})
	if o.willTopic != "" {
		opts.SetWill(o.willTopic, "gone", 1, false)
	}
	opts.SetCustomOpenConnectionFn(func(uri *url.URL, _ paho3.ClientOptions) (net.Conn, error) {
		var conn net.Conn
		var err error
		switch uri.Scheme {
		case "ws", "wss":
			conn, err = paho3.NewWebsocket(uri.String(), e.tlsConfig(), 5*time.Second, nil, nil)
		case "ssl":
			conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", uri.Host, e.tlsConfig())
		default:
			conn, err = net.DialTimeout("tcp", uri.Host, 5*time.Second)
		}
		if err == nil {
			c.conn.Store(conn)
		}
		return conn, err
	})
	c.c = paho3.NewClient(opts)
	tok := c.c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect over %s: %v", tr, tok.Error())
	}
	c.present = tok.(*paho3.ConnectToken).SessionPresent()
	t.Cleanup(c.close)
	return c
}

func (c *pahoGo3) sub(t *testing.T, filter string, qos byte, _ int) {
	t.Helper()
	tok := c.c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	if code := tok.(*paho3.SubscribeToken).Result()[filter]; code >= 0x80 {
		t.Fatalf("subscribe %s: SUBACK %#x", filter, code)
	}
}

func (c *pahoGo3) pub(t *testing.T, topic, payload string, qos byte, retain bool, _ *cprops) {
	t.Helper()
	if tok := c.c.Publish(topic, qos, retain, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (c *pahoGo3) next(t *testing.T, what string) cmsg { t.Helper(); return nextMsg(t, c.box, what) }
func (c *pahoGo3) sessionPresent() bool                { return c.present }
func (c *pahoGo3) aliasMax() uint16                    { return 0 }

func (c *pahoGo3) drop() {
	if conn, ok := c.conn.Load().(net.Conn); ok {
		conn.Close()
	}
}

func (c *pahoGo3) close() {
	if c.c.IsConnected() {
		c.c.Disconnect(250)
	}
}

// --- paho.golang, MQTT 5 ---

type pahoGo5 struct {
	c       *paho.Client
	conn    net.Conn
	box     chan cmsg
	present bool
	alias   uint16
}

func dialPaho5(t *testing.T, e *conformEnv, tr string, o copts) cclient {
	t.Helper()
	var conn net.Conn
	var err error
	switch tr {
	case "tcp":
		conn, err = net.DialTimeout("tcp", e.tcp, 5*time.Second)
	case "tls":
		// A tls.Conn writes paho.golang's packet buffers one Write at a
		// time, so its pinger's PINGREQ could land inside another
		// packet: atomicWrites (e2e_clients_test.go) makes each packet
		// one write again, as on a TCP socket.
		var tc net.Conn
		if tc, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.tls, e.tlsConfig()); err == nil {
			t.Cleanup(func() { tc.Close() })
			conn = atomicWrites(t, tc)
		}
	case "ws":
		conn = atomicWrites(t, dialWS(t, "ws://"+e.ws+"/mqtt", nil))
	case "wss":
		conn = atomicWrites(t, dialWS(t, "wss://"+e.wss+"/mqtt", e.tlsConfig()))
	}
	if err != nil {
		t.Fatalf("dial %s: %v", tr, err)
	}
	c := &pahoGo5{conn: conn, box: make(chan cmsg, 100)}
	c.c = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			pk := p.Packet
			m := cmsg{topic: pk.Topic, payload: string(pk.Payload), qos: pk.QoS, retain: pk.Retain}
			if pp := pk.Properties; pp != nil {
				m.props.respTopic, m.props.corr = pp.ResponseTopic, string(pp.CorrelationData)
				if pp.MessageExpiry != nil {
					m.props.expiry = *pp.MessageExpiry
				}
				if pp.SubscriptionIdentifier != nil {
					m.props.subIDs = []int{*pp.SubscriptionIdentifier}
				}
				m.props.user = map[string]string{}
				for _, u := range pp.User {
					m.props.user[u.Key] = u.Value
				}
			}
			c.box <- m
			return true, nil
		}},
	})
	cp := &paho.Connect{ClientID: o.id, KeepAlive: 30, CleanStart: !o.persistent}
	if o.persistent {
		exp := uint32(300)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	if o.willTopic != "" {
		cp.WillMessage = &paho.WillMessage{Topic: o.willTopic, Payload: []byte("gone"), QoS: 1}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := c.c.Connect(ctx, cp)
	if err != nil || ca.ReasonCode != 0 {
		conn.Close()
		t.Fatalf("connect over %s: %v %+v", tr, err, ca)
	}
	c.present = ca.SessionPresent
	if ca.Properties != nil && ca.Properties.TopicAliasMaximum != nil {
		c.alias = *ca.Properties.TopicAliasMaximum
	}
	t.Cleanup(c.close)
	return c
}

func (c *pahoGo5) sub(t *testing.T, filter string, qos byte, subID int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s := &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}}
	if subID > 0 {
		s.Properties = &paho.SubscribeProperties{SubscriptionIdentifier: &subID}
	}
	sa, err := c.c.Subscribe(ctx, s)
	if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		t.Fatalf("subscribe %s: %v %+v", filter, err, sa)
	}
}

func (c *pahoGo5) pub(t *testing.T, topic, payload string, qos byte, retain bool, p *cprops) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pk := &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: qos, Retain: retain, Properties: &paho.PublishProperties{}}
	if p != nil {
		pk.Properties.ResponseTopic = p.respTopic
		if p.corr != "" {
			pk.Properties.CorrelationData = []byte(p.corr)
		}
		if p.alias > 0 {
			a := p.alias
			pk.Properties.TopicAlias = &a
		}
		if p.expiry > 0 {
			x := p.expiry
			pk.Properties.MessageExpiry = &x
		}
		keys := make([]string, 0, len(p.user))
		for k := range p.user {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			pk.Properties.User = append(pk.Properties.User, paho.UserProperty{Key: k, Value: p.user[k]})
		}
	}
	pr, err := c.c.Publish(ctx, pk)
	if err != nil || (pr != nil && pr.ReasonCode >= 0x80) {
		t.Fatalf("publish %q: %v %+v", topic, err, pr)
	}
}

func (c *pahoGo5) next(t *testing.T, what string) cmsg { t.Helper(); return nextMsg(t, c.box, what) }
func (c *pahoGo5) sessionPresent() bool                { return c.present }
func (c *pahoGo5) aliasMax() uint16                    { return c.alias }
func (c *pahoGo5) drop()                               { c.conn.Close(); <-c.c.Done() }

func (c *pahoGo5) close() {
	select {
	case <-c.c.Done():
	default:
		_ = c.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	}
	<-c.c.Done()
}
