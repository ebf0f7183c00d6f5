package broker

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/devices"
)

// limitEnv is a broker as tether serve assembles it for the limits: the
// access hook on a registry, the retained bound, and the session store,
// all on the data directory dir, so that a test can stop it and start it
// again on the same data (a restart).
type limitEnv struct {
	dir   string
	db    *devices.DB
	reg   *devices.Registry
	auth  *Auth
	lim   *RetainedLimit
	store *sessions.Store
	b     *Broker
	tcp   string
	done  bool
}

// startLimitEnv starts the broker with o (listeners aside) and the
// retained bounds rl, after the hooks first if any.
func startLimitEnv(t *testing.T, dir string, o Options, rl RetainedLimitOptions, first ...mqtt.Hook) *limitEnv {
	t.Helper()
	return startLimitEnvLog(t, dir, o, rl, authLogger(), first...)
}

// startLimitEnvLog is startLimitEnv with the access hook logging to log.
func startLimitEnvLog(t *testing.T, dir string, o Options, rl RetainedLimitOptions, log *slog.Logger, first ...mqtt.Hook) *limitEnv {
	t.Helper()
	ctx := context.Background()
	e := &limitEnv{dir: dir}
	var err error
	if e.db, err = devices.OpenDB(dir); err != nil {
		t.Fatal(err)
	}
	if e.reg, err = devices.OpenRegistry(ctx, e.db, authLogger()); err != nil {
		t.Fatal(err)
	}
	e.reg.SetPasswordCost(bcrypt.MinCost)
	if e.store, err = sessions.Open(dir, &sessions.Options{Logger: authLogger()}); err != nil {
		t.Fatal(err)
	}
	e.auth = NewAuth(AuthOptions{Registry: e.reg, Logger: log, Sessions: e.store,
		Logins: devices.NewLoginLimiter(&devices.LoginLimitOptions{Base: 20 * time.Millisecond, Max: 100 * time.Millisecond})})
	rl.Identity, rl.Logger = e.auth.Identity, authLogger()
	e.lim = NewRetainedLimit(rl)
	o.TCPAddr, o.Logger, o.Access = "127.0.0.1:0", authLogger(), e.auth
	o.Hooks = append(first, e.lim, e.store)
	if e.b, err = New(o); err != nil {
		t.Fatal(err)
	}
	e.store.Attach(e.b.Server)
	e.lim.Attach(e.b.Server)
	if err := e.b.Start(); err != nil {
		t.Fatal(err)
	}
	e.tcp = e.b.TCP.Address()
	t.Cleanup(func() { e.stop(t) })
	return e
}

// stop shuts the broker down as tether serve does, then its stores.
func (e *limitEnv) stop(t *testing.T) {
	if e.done {
		return
	}
	e.done = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.b.Shutdown(ctx); err != nil {
		t.Error(err)
	}
	e.store.Close()
	e.reg.Close()
	e.db.Close()
}

// device registers a device with grants and returns its secret.
func (e *limitEnv) device(t *testing.T, id string, grants ...devices.TopicGrant) string {
	t.Helper()
	_, secret, err := e.reg.CreateDevice(context.Background(), devices.NewDevice{ID: id, Topics: grants})
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

func (e *limitEnv) user(t *testing.T, name, role string) string {
	t.Helper()
	pass := "pw-" + name + "-123"
	if _, err := e.reg.CreateUser(context.Background(), name, pass, role); err != nil {
		t.Fatal(err)
	}
	return pass
}

// lim5 is an MQTT 5 client (paho.golang) for the limits' tests.
type lim5 struct {
	c    *paho5.Client
	conn net.Conn
	got  chan *paho5.Publish
}

// dial5 connects an MQTT 5 client; expiry > 0 makes its session
// persistent (clean start off).
func dial5(t *testing.T, addr, id, user, pass string, expiry uint32) (*lim5, *paho5.Connack) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l := &lim5{conn: conn, got: make(chan *paho5.Publish, 4096)}
	l.c = paho5.NewClient(paho5.ClientConfig{Conn: conn,
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(p paho5.PublishReceived) (bool, error) {
			select {
			case l.got <- p.Packet:
			default:
			}
			return true, nil
		}}})
	cp := &paho5.Connect{ClientID: id, KeepAlive: 30, CleanStart: expiry == 0, Username: user, UsernameFlag: user != "",
		Password: []byte(pass), PasswordFlag: pass != ""}
	if expiry > 0 {
		cp.Properties = &paho5.ConnectProperties{SessionExpiryInterval: &expiry}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := l.c.Connect(ctx, cp)
	if ca == nil || ca.ReasonCode != 0 {
		conn.Close()
		t.Fatalf("connect %s: %v %+v", id, err, ca)
	}
	t.Cleanup(l.close)
	return l, ca
}

func (l *lim5) close() {
	select {
	case <-l.c.Done():
	default:
		_ = l.c.Disconnect(&paho5.Disconnect{})
	}
	<-l.c.Done()
}

// pub publishes and returns the PUBACK's (QoS 1) or PUBREC's (QoS 2)
// reason code.
func (l *lim5) pub(t *testing.T, topic string, payload []byte, qos byte, retain bool) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pr, err := l.c.Publish(ctx, &paho5.Publish{Topic: topic, Payload: payload, QoS: qos, Retain: retain})
	if qos == 0 {
		if err != nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
		return 0
	}
	if pr == nil {
		t.Fatalf("publish %s: %v (no acknowledgement)", topic, err)
	}
	return pr.ReasonCode
}

// sub subscribes to filters in one SUBSCRIBE and returns the SUBACK's
// reason codes.
func (l *lim5) sub(t *testing.T, filters ...string) []byte {
	t.Helper()
	s := &paho5.Subscribe{}
	for _, f := range filters {
		s.Subscriptions = append(s.Subscriptions, paho5.SubscribeOptions{Topic: f, QoS: 1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := l.c.Subscribe(ctx, s)
	if sa == nil {
		t.Fatalf("subscribe: %v", err)
	}
	// The engine sends a subscription's retained messages after its
	// SUBACK, on the subscriber's reading goroutine: a message retained
	// meanwhile would come twice, live and from that scan. The client's
	// packets are handled one after the other, so an UNSUBACK for a
	// filter never held (0x11) means the scan is over.
	if _, err := l.c.Unsubscribe(ctx, &paho5.Unsubscribe{Topics: []string{"tether-test/barrier"}}); err != nil {
		t.Fatalf("unsubscribe barrier: %v", err)
	}
	return sa.Reasons
}

func (l *lim5) unsub(t *testing.T, filters ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := l.c.Unsubscribe(ctx, &paho5.Unsubscribe{Topics: filters}); err != nil {
		t.Fatalf("unsubscribe: %v", err)
	}
}

// dial3 connects a 3.1.1 client (paho.mqtt.golang); lost is closed when
// the broker closes its connection.
func dial3(t *testing.T, addr, id, user, pass string, clean bool) (paho3.Client, chan struct{}) {
	t.Helper()
	lost := make(chan struct{})
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(clean).
		SetConnectTimeout(5 * time.Second).SetWriteTimeout(5 * time.Second).
		SetConnectionLostHandler(func(paho3.Client, error) { close(lost) })
	c := paho3.NewClient(o)
	waitToken(t, "connect "+id, c.Connect())
	t.Cleanup(func() { c.Disconnect(0) })
	return c, lost
}

// sub3 subscribes a 3.1.1 client to filters at QoS 1, one SUBSCRIBE per
// filter in the order given, and returns each filter's SUBACK code. paho
// takes a SUBSCRIBE's filters as a map, which sent them in random order:
// where a limit grants the first filters and refuses the rest
// (TestSubscriptionLevelLimit/mqtt311) the outcome followed map order.
func sub3(t *testing.T, c paho3.Client, filters ...string) map[string]byte {
	t.Helper()
	got := map[string]byte{}
	for _, f := range filters {
		tok := c.Subscribe(f, 1, nil)
		waitToken(t, "subscribe", tok)
		for k, v := range tok.(*paho3.SubscribeToken).Result() {
			got[k] = v
		}
	}
	return got
}

// engineSubs returns how many subscriptions the engine holds for client
// id, connected or not.
func engineSubs(b *Broker, id string) int {
	cl, ok := b.Server.Clients.Get(id)
	if !ok {
		return -1
	}
	return cl.State.Subscriptions.Len()
}

// waitLost waits for the broker to close a 3.1.1 client's connection.
func waitLost(t *testing.T, lost chan struct{}, what string) {
	t.Helper()
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: the connection was not closed", what)
	}
}
