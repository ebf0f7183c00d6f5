package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/devices"
)

// devNode is a broker with anonymous access and the telemetry, command and
// twin hooks over one database, listening on TCP and WebSocket.
type devNode struct {
	b        *Broker
	db       *devices.DB
	reg      *devices.Registry
	tel      *devices.Telemetry
	cmds     *devices.Commands
	twins    *devices.Twins
	cmdHook  *CommandHook
	twinHook *TwinHook
	tcp      string // host:port
	ws       string // ws://host:port/mqtt
}

func startDevNode(t *testing.T, ids ...string) *devNode {
	t.Helper()
	ctx := context.Background()
	log := storeLogger()
	db, err := devices.OpenDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.OpenRegistry(ctx, db, log)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, _, err := reg.CreateDevice(ctx, devices.NewDevice{ID: id, Name: id}); err != nil {
			t.Fatal(err)
		}
	}
	n := &devNode{db: db, reg: reg}
	if n.tel, err = devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{FlushInterval: 20 * time.Millisecond, Logger: log, LastValues: reg}); err != nil {
		t.Fatal(err)
	}
	if n.cmds, err = devices.OpenCommands(ctx, db, &devices.CommandsOptions{SweepInterval: 50 * time.Millisecond, Logger: log}); err != nil {
		t.Fatal(err)
	}
	if n.twins, err = devices.OpenTwins(ctx, db, &devices.TwinsOptions{Logger: log}); err != nil {
		t.Fatal(err)
	}
	n.cmdHook = NewCommandHook(n.cmds, log)
	n.twinHook = NewTwinHook(n.twins, log)
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	o.WebSocket = true
	o.AllowAnonymous = true
	o.Logger, o.Hooks = log, []mqtt.Hook{NewTelemetryHook(n.tel, log), n.cmdHook, n.twinHook}
	n.b, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	n.cmdHook.Attach(n.b.Server)
	n.twinHook.Attach(n.b.Server)
	if err := n.b.Start(); err != nil {
		t.Fatal(err)
	}
	n.tcp = n.b.TCP.Address()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/mqtt", n.b.WebSocketHandler())
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	n.ws = "ws://" + ln.Addr().String() + "/mqtt"
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = n.b.Shutdown(sctx)
		_ = hs.Shutdown(sctx)
		n.tel.Close()
		n.cmds.Close()
		n.twins.Close()
		reg.Close()
		db.Close()
	})
	return n
}

// devMsg is a message a test client received.
type devMsg struct {
	topic         string
	payload       []byte
	responseTopic string
	correlation   []byte
	retained      bool
}

// devClient is a paho client of either MQTT version over TCP or WebSocket.
type devClient interface {
	publish(t *testing.T, topic string, payload []byte, qos byte)
	// send publishes without a test to fail (from a message handler).
	send(topic string, payload []byte, qos byte) error
	subscribe(t *testing.T, filter string, qos byte)
	close()
}

// clientKind names a transport and protocol version for table tests.
type clientKind struct {
	name string
	v5   bool
	ws   bool
}

var clientKinds = []clientKind{
	{"tcp-3.1.1", false, false},
	{"ws-3.1.1", false, true},
	{"tcp-5", true, false},
	{"ws-5", true, true},
}

func (n *devNode) connect(t *testing.T, k clientKind, id string, clean bool, onMsg func(devMsg)) devClient {
	t.Helper()
	if k.v5 {
		return connect5(t, n, k.ws, id, clean, onMsg)
	}
	return connect3(t, n, k.ws, id, clean, onMsg)
}

type client3 struct{ c paho3.Client }

func connect3(t *testing.T, n *devNode, ws bool, id string, clean bool, onMsg func(devMsg)) devClient {
	t.Helper()
	url := "tcp://" + n.tcp
	if ws {
		url = n.ws
	}
	o := paho3.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetOrderMatters(false)
	if onMsg != nil {
		o.SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) {
			onMsg(devMsg{topic: m.Topic(), payload: m.Payload(), retained: m.Retained()})
		})
	}
	c := paho3.NewClient(o)
	waitToken(t, "connect "+id, c.Connect())
	cl := &client3{c}
	t.Cleanup(cl.close)
	return cl
}

func (c *client3) publish(t *testing.T, topic string, payload []byte, qos byte) {
	t.Helper()
	waitToken(t, "publish "+topic, c.c.Publish(topic, qos, false, payload))
}

func (c *client3) send(topic string, payload []byte, qos byte) error {
	tok := c.c.Publish(topic, qos, false, payload)
	tok.WaitTimeout(5 * time.Second)
	return tok.Error()
}

func (c *client3) subscribe(t *testing.T, filter string, qos byte) {
	t.Helper()
	waitToken(t, "subscribe "+filter, c.c.Subscribe(filter, qos, nil))
}

func (c *client3) close() { c.c.Disconnect(0) }

type client5 struct {
	c *paho.Client
	// ctx ends at close, so that publishes still waiting for their
	// acknowledgement give up with the connection.
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
}

func connect5(t *testing.T, n *devNode, ws bool, id string, clean bool, onMsg func(devMsg)) devClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var conn net.Conn
	if ws {
		wc, _, err := websocket.Dial(ctx, n.ws, &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
		if err != nil {
			t.Fatal(err)
		}
		conn = websocket.NetConn(context.Background(), wc, websocket.MessageBinary)
	} else {
		var err error
		if conn, err = net.Dial("tcp", n.tcp); err != nil {
			t.Fatal(err)
		}
	}
	// paho writes a packet in several Writes: the lock keeps concurrent
	// packets (a publish and an acknowledgement) from interleaving.
	cfg := paho.ClientConfig{ClientID: id, Conn: packets.NewThreadSafeConn(conn)}
	if onMsg != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			m := devMsg{topic: pr.Packet.Topic, payload: pr.Packet.Payload, retained: pr.Packet.Retain}
			if p := pr.Packet.Properties; p != nil {
				m.responseTopic, m.correlation = p.ResponseTopic, p.CorrelationData
			}
			onMsg(m)
			return true, nil
		}}
	}
	c := paho.NewClient(cfg)
	cp := &paho.Connect{ClientID: id, CleanStart: clean, KeepAlive: 30}
	if !clean {
		exp := uint32(3600)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	ca, err := c.Connect(ctx, cp)
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect %s: %v %+v", id, err, ca)
	}
	cl := &client5{c: c}
	cl.ctx, cl.cancel = context.WithCancel(context.Background())
	t.Cleanup(cl.close)
	return cl
}

func (c *client5) publish(t *testing.T, topic string, payload []byte, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload}); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

func (c *client5) send(topic string, payload []byte, qos byte) error {
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	_, err := c.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload})
	return err
}

func (c *client5) subscribe(t *testing.T, filter string, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}}); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
}

func (c *client5) close() {
	c.once.Do(func() {
		c.cancel()
		_ = c.c.Disconnect(&paho.Disconnect{})
		<-c.c.Done()
	})
}

// inbox collects messages, safe for the clients' goroutines.
type inbox struct {
	mu   sync.Mutex
	msgs []devMsg
}

func (b *inbox) add(m devMsg) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m)
	b.mu.Unlock()
}

func (b *inbox) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.msgs)
}

func (b *inbox) get() []devMsg {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]devMsg(nil), b.msgs...)
}

func TestTelemetryHookStoresAndRoutes(t *testing.T) {
	for _, k := range clientKinds {
		t.Run(k.name, func(t *testing.T) {
			ctx := context.Background()
			n := startDevNode(t, "dev-1")
			var got inbox
			watcher := n.connect(t, clientKinds[0], "watcher", true, got.add)
			watcher.subscribe(t, "devices/+/telemetry", 1)
			dev := n.connect(t, k, "dev-1", true, nil)

			// A ts an hour ahead of the server's clock is stored; one more
			// than devices.MaxTelemetryAhead ahead (2999: history that
			// retention would never prune) is not.
			ahead := func(d time.Duration) string {
				return fmt.Sprintf(`{"ahead":1,"ts":%d}`, time.Now().Add(d).UnixMilli())
			}
			good := []string{`{"temp":21.5,"on":true}`, `{"temp":22,"ts":"2026-01-01T00:00:00Z"}`, `{"mode":"eco"}`, `{"v":{"a":1}}`,
				ahead(time.Hour)}
			bad := []string{`not json`, `[1,2,3]`, `{"v":NaN}`, `{"v":[1]}`, `{"v":{"a":[1]}}`, `{"v":null}`, `"str"`,
				strings.Repeat("[", 1<<20-200), strings.Repeat(`{"a":`, 4000) + "1" + strings.Repeat("}", 4000),
				ahead(devices.MaxTelemetryAhead + time.Hour), `{"temp":20,"ts":"2999-12-31T00:00:00Z"}`}
			for _, p := range good {
				dev.publish(t, "devices/dev-1/telemetry", []byte(p), 1)
			}
			for _, p := range bad {
				dev.publish(t, "devices/dev-1/telemetry", []byte(p), 1)
			}
			dev.publish(t, "devices/dev-1/telemetry", []byte(`{"temp":23}`), 0)
			want := len(good) + len(bad) + 1
			checkFor(t, 10*time.Second, func() error {
				if got.len() != want {
					return errorf("watcher got %d of %d messages", got.len(), want)
				}
				if r := n.tel.Rejected(); r != int64(len(bad)) {
					return errorf("rejected %d, want %d", r, len(bad))
				}
				if s, _ := n.tel.Stats(); s != int64(len(good)+1) {
					return errorf("stored %d", s)
				}
				return nil
			})
			pts, err := n.tel.Points(ctx, "dev-1", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Now().Add(2*time.Hour), 100)
			if err != nil || len(pts) != len(good)+1 {
				t.Fatalf("points %v, %v", pts, err)
			}
			if !pts[0].TS.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) {
				t.Errorf("first point at %v, want its ts", pts[0].TS)
			}
			var lv string
			if err := n.db.R.QueryRow(`SELECT last_values FROM devices WHERE id = 'dev-1'`).Scan(&lv); err != nil {
				t.Fatal(err)
			}
			var last map[string]any
			_ = json.Unmarshal([]byte(lv), &last)
			if last["temp"] != 23.0 || last["mode"] != "eco" || last["on"] != true || last["v.a"] != 1.0 {
				t.Errorf("last values %s", lv)
			}
		})
	}
}

func errorf(format string, a ...any) error { return fmt.Errorf(format, a...) }
