package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// startCluster starts count nodes in-process with embedded NATS, each
// routing to the first's route port (NATS gossips the rest), and waits
// until every node hears every other.
func startCluster(t *testing.T, count int, edit func(i int, cfg *configs.Config)) []*app {
	t.Helper()
	var apps []*app
	for i := 0; i < count; i++ {
		cfg := testConfig(t)
		cfg.Cluster.Node = fmt.Sprintf("node%d", i+1)
		cfg.Cluster.Listen = "127.0.0.1:0"
		cfg.Cluster.Secret = testClusterSecret
		if i > 0 {
			cfg.Cluster.Peers = []string{apps[0].cluster.RouteAddr()}
		}
		if edit != nil {
			edit(i, &cfg)
		}
		apps = append(apps, startTestApp(t, cfg))
	}
	checkFor(t, 20*time.Second, func() error {
		for _, a := range apps {
			if got := len(a.cluster.Nodes()); got != count {
				return fmt.Errorf("%s hears %d nodes, want %d", a.cluster.Name(), got, count)
			}
		}
		return nil
	})
	return apps
}

const testClusterSecret = "route-secret-for-tests"

// waitRoutes waits until from sends messages on topic to every node in to.
func waitRoutes(t *testing.T, from *app, topic string, to ...*app) {
	t.Helper()
	checkFor(t, 10*time.Second, func() error {
		routes := from.cluster.Routes(topic)
		for _, a := range to {
			if !slices.Contains(routes, a.cluster.Name()) {
				return fmt.Errorf("%s does not route %q to %s yet (routes %v)", from.cluster.Name(), topic, a.cluster.Name(), routes)
			}
		}
		return nil
	})
}

// TestClusterPubSub: clients of every kind on one node receive what
// clients on the two other nodes publish, at QoS 0, 1 and 2, once.
func TestClusterPubSub(t *testing.T) {
	apps := startCluster(t, 3, nil)
	for i, sub := range []clientSpec{{3, "tcp"}, {5, "ws"}, {5, "tcp"}, {3, "ws"}} {
		t.Run(sub.String(), func(t *testing.T) {
			home := apps[i%3]
			topic := "cluster/" + sub.String()
			s := connectClient(t, home, sub, nil)
			s.subscribe(t, topic+"/#", 2)
			for _, other := range apps {
				if other != home {
					waitRoutes(t, other, topic+"/x", home)
				}
			}
			for j, other := range apps {
				if other == home {
					continue
				}
				p := connectClient(t, other, allClients[(i+j)%len(allClients)], nil)
				for qos := byte(0); qos <= 2; qos++ {
					p.publish(t, fmt.Sprintf("%s/%s/q%d", topic, other.cluster.Name(), qos), "payload", qos, false)
				}
				for qos := byte(0); qos <= 2; qos++ {
					expectMessage(t, s.inbox(), message{fmt.Sprintf("%s/%s/q%d", topic, other.cluster.Name(), qos), "payload", qos, false})
				}
			}
			// No copy came back round: a last message from the home
			// node itself arrives next, and alone.
			p := connectClient(t, home, clientSpec{5, "tcp"}, nil)
			p.publish(t, topic+"/last", "last", 1, false)
			expectMessage(t, s.inbox(), message{topic + "/last", "last", 1, false})
			expectNoMessage(t, s.inbox())
		})
	}
}

// TestClusterProperties: the MQTT 5 properties of a PUBLISH cross nodes.
func TestClusterProperties(t *testing.T) {
	apps := startCluster(t, 2, nil)
	got := make(chan *paho.Publish, 1)
	sub := paho.NewClient(paho.ClientConfig{Conn: dial5(t, apps[1], "tcp"),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			got <- p.Packet
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := sub.Connect(ctx, &paho.Connect{ClientID: "props-sub", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Disconnect(&paho.Disconnect{}) })
	if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "props/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, apps[0], "props/x", apps[1])
	pub := paho.NewClient(paho.ClientConfig{Conn: dial5(t, apps[0], "tcp")})
	if _, err := pub.Connect(ctx, &paho.Connect{ClientID: "props-pub", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Disconnect(&paho.Disconnect{}) })
	expiry := uint32(3600)
	want := &paho.PublishProperties{ContentType: "application/json", ResponseTopic: "props/reply",
		CorrelationData: []byte{1, 2, 3}, MessageExpiry: &expiry, User: paho.UserProperties{{Key: "k", Value: "v"}}}
	if _, err := pub.Publish(ctx, &paho.Publish{Topic: "props/x", QoS: 1, Payload: []byte(`{}`), Properties: want}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		pp := p.Properties
		if pp == nil || pp.ContentType != want.ContentType || pp.ResponseTopic != want.ResponseTopic ||
			string(pp.CorrelationData) != string(want.CorrelationData) || pp.MessageExpiry == nil ||
			*pp.MessageExpiry > expiry || *pp.MessageExpiry < expiry-60 || pp.User.Get("k") != "v" {
			t.Fatalf("properties after crossing: %+v", pp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
}

// TestClusterRetainedAndWill: a retained message published on one node
// reaches a later subscriber on another, and so does its deletion; a will
// left on one node reaches a subscriber on another.
func TestClusterRetainedAndWill(t *testing.T) {
	apps := startCluster(t, 3, nil)
	p := connectClient(t, apps[0], clientSpec{3, "tcp"}, nil)
	p.publish(t, "state/lamp", "on", 1, true)
	checkFor(t, 10*time.Second, func() error {
		for _, a := range apps[1:] {
			if len(a.broker.Server.Topics.Messages("state/lamp")) != 1 {
				return fmt.Errorf("not retained on %s yet", a.cluster.Name())
			}
		}
		return nil
	})
	s := connectClient(t, apps[2], clientSpec{5, "ws"}, nil)
	s.subscribe(t, "state/lamp", 1)
	expectMessage(t, s.inbox(), message{"state/lamp", "on", 1, true})
	p.publish(t, "state/lamp", "", 1, true)
	checkFor(t, 10*time.Second, func() error {
		for _, a := range apps[1:] {
			if n := len(a.broker.Server.Topics.Messages("state/lamp")); n != 0 {
				return fmt.Errorf("still %d retained on %s", n, a.cluster.Name())
			}
		}
		return nil
	})

	w := connectClient(t, apps[1], clientSpec{3, "ws"}, nil)
	w.subscribe(t, "wills/+", 1)
	waitRoutes(t, apps[0], "wills/x", apps[1])
	d := connectClient(t, apps[0], clientSpec{5, "tcp"}, &message{topic: "wills/dying", payload: "gone", qos: 1})
	dropConnection(t, d)
	expectMessage(t, w.inbox(), message{"wills/dying", "gone", 1, false})
}

// TestClusterTakeover: connecting on one node with a client id live on
// another disconnects it there (session taken over), for the same
// identity; another identity is refused (0x85) and the first stays.
func TestClusterTakeover(t *testing.T) {
	apps := startCluster(t, 2, nil)
	ctx := context.Background()
	if _, err := apps[1].registry.CreateUser(ctx, "viewer1", "viewer1-password", "viewer"); err != nil {
		t.Fatal(err)
	}
	first := connect5(t, dial5(t, apps[0], "tcp"), "same-id", nil)
	second := connect5(t, dial5(t, apps[1], "tcp"), "same-id", nil)
	select {
	case d := <-first.disconnected:
		if d.ReasonCode != 0x8E {
			t.Fatalf("first connection: DISCONNECT 0x%02x, want 0x8E session taken over", d.ReasonCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first connection was not taken over")
	}
	// second (anonymous) holds same-id on node2: the viewer may not have it
	// on node1.
	if code := connect3Code(t, apps[0].mqttAddr(), "same-id", "viewer1", "viewer1-password", true, nil); code == 0 {
		t.Fatal("another identity took the session over from another node")
	}
	select {
	case d := <-second.disconnected:
		t.Fatalf("the owner was disconnected: 0x%02x", d.ReasonCode)
	default:
	}
}

// TestClusterViewerMayNotPublish: a viewer on one node cannot publish on a
// device's topic for subscribers on another node.
func TestClusterViewerMayNotPublish(t *testing.T) {
	apps := startCluster(t, 2, func(i int, cfg *configs.Config) { cfg.Auth.AllowAnonymous = i == 0 })
	if _, err := apps[1].registry.CreateUser(context.Background(), "viewer1", "viewer1-password", "viewer"); err != nil {
		t.Fatal(err)
	}
	s := connectClient(t, apps[0], clientSpec{5, "tcp"}, nil)
	s.subscribe(t, "devices/d1/#", 1)
	s.subscribe(t, "probe", 1)
	waitRoutes(t, apps[1], "devices/d1/telemetry", apps[0])
	waitRoutes(t, apps[1], "probe", apps[0])
	v := connectUser(t, apps[1].mqttAddr(), "viewer-client", "viewer1", "viewer1-password")
	if tok := v.c.Publish("devices/d1/telemetry", 0, false, `{"t":1}`); !tok.WaitTimeout(5 * time.Second) {
		t.Fatal("publish timed out")
	}
	admin := connect3(t, apps[0], "tcp", "probe-pub", nil)
	admin.publish(t, "probe", "probe", 1, false)
	expectMessage(t, s.inbox(), message{"probe", "probe", 1, false})
	expectNoMessage(t, s.inbox())
}

// TestClusterBrokerAndMetrics: GET /broker lists the nodes, /metrics
// labels every series with the node.
func TestClusterBrokerAndMetrics(t *testing.T) {
	apps := startCluster(t, 2, nil)
	body := httpGet(t, "http://"+apps[0].httpAddr()+"/metrics")
	for _, line := range strings.Split(body, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") && !strings.Contains(line, `node="node1"`) {
			t.Fatalf("series without the node label: %s", line)
		}
	}
	if !strings.Contains(body, "tether_cluster_bus_up{node=\"node1\"} 1") {
		t.Fatal("no tether_cluster_bus_up 1")
	}
	var info struct {
		Nodes []struct {
			Name string `json:"name"`
			Self bool   `json:"self"`
		} `json:"nodes"`
	}
	tok := viewerToken(t, apps[0])
	req, _ := http.NewRequest("GET", "http://"+apps[0].httpAddr()+"/api/v1/broker", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		t.Fatal(err)
	}
	if len(info.Nodes) != 2 || info.Nodes[0].Name != "node1" || !info.Nodes[0].Self || info.Nodes[1].Name != "node2" {
		t.Fatalf("nodes: %+v", info.Nodes)
	}
}

// TestClusterReadyFollowsBus: with an external NATS, /readyz says 503
// while NATS is down and 200 once it is back.
func TestClusterReadyFollowsBus(t *testing.T) {
	ns := startNATS(t, natsserver.RANDOM_PORT)
	port := ns.Addr().(interface{ String() string }).String()
	cfg := testConfig(t)
	cfg.Cluster.Node = "solo"
	cfg.Cluster.NATSURL = "nats://" + port
	a := startTestApp(t, cfg)
	ready := func(want int) func() error {
		return func() error {
			resp, err := http.Get("http://" + a.httpAddr() + "/readyz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				return fmt.Errorf("/readyz %d, want %d", resp.StatusCode, want)
			}
			return nil
		}
	}
	checkFor(t, 10*time.Second, ready(200))
	ns.Shutdown()
	ns.WaitForShutdown()
	checkFor(t, 10*time.Second, ready(503))
	_, p, _ := strings.Cut(port, ":")
	var n int
	fmt.Sscan(p, &n)
	startNATS(t, n)
	checkFor(t, 20*time.Second, ready(200))
}

// startNATS starts a NATS server on loopback (port: RANDOM_PORT or a
// given one); the test's cleanup stops it.
func startNATS(t *testing.T, port int) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// viewerToken creates a viewer on a and logs in over the API.
func viewerToken(t *testing.T, a *app) string {
	t.Helper()
	if _, err := a.registry.CreateUser(context.Background(), "watcher", "watcher-password-1", "viewer"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post("http://"+a.httpAddr()+"/api/v1/auth/login", "application/json",
		strings.NewReader(`{"username":"watcher","password":"watcher-password-1"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Token == "" {
		t.Fatalf("login: HTTP %d %v", resp.StatusCode, err)
	}
	return out.Token
}

// TestClusterFlags: the cluster flags and variables set the cluster.*
// keys; a bad one names its flag and key.
func TestClusterFlags(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	cfg, err := loadConfig([]string{"--node", "n1", "--cluster-listen", "127.0.0.1:6222", "--cluster-peers", "a:6222,b:6222"}, io.Discard, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.Cluster; c.Node != "n1" || c.Listen != "127.0.0.1:6222" || !slices.Equal(c.Peers, []string{"a:6222", "b:6222"}) {
		t.Fatalf("cluster %+v", c)
	}
	cfg, err = loadConfig(nil, io.Discard, env(map[string]string{"TETHER_CLUSTER_NATS_URL": "nats://nats:4222", "TETHER_CLUSTER_NODE": "n2"}))
	if err != nil || cfg.Cluster.NATSURL != "nats://nats:4222" || cfg.Cluster.Node != "n2" {
		t.Fatalf("%+v %v", cfg.Cluster, err)
	}
	if _, err := loadConfig([]string{"--nats-url", "nats://x:4222", "--cluster-listen", ":6222"}, io.Discard, env(nil)); err == nil ||
		!strings.Contains(err.Error(), "cluster.nats_url") {
		t.Fatalf("both: %v", err)
	}
}

// TestClusterUINodes: the dashboard's overview lists the cluster's nodes.
func TestClusterUINodes(t *testing.T) {
	a := uiApp(t, t.TempDir(), func(c *configs.Config) { c.Cluster.Node, c.Cluster.Listen = "ui1", "127.0.0.1:0" })
	cfg := testConfig(t)
	cfg.Cluster.Node, cfg.Cluster.Listen, cfg.Cluster.Peers = "ui2", "127.0.0.1:0", []string{a.cluster.RouteAddr()}
	startTestApp(t, cfg)
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "both nodes listed",
		waitJS(`(document.querySelector('#broker-info [data-nodes="2"]') || {}).textContent?.includes('ui1 (this node)') &&
			document.querySelector('#broker-info [data-nodes="2"]').textContent.includes('ui2')`))
}

// TestClusterOfflineSession: a persistent session offline on one node
// still attracts messages published on another; they are delivered when
// its client comes back to its node.
func TestClusterOfflineSession(t *testing.T) {
	apps := startCluster(t, 2, nil)
	got := make(chan string, 10)
	onMsg := func(m paho3.Message) { got <- string(m.Payload()) }
	c := testmqtt.Client(t, apps[1].mqttAddr(), "sleeper", false, true, onMsg)
	testmqtt.WaitToken(t, "subscribe", c.Subscribe("sleeper/in", 1, nil))
	waitRoutes(t, apps[0], "sleeper/in", apps[1])
	c.Disconnect(50)
	checkFor(t, 10*time.Second, func() error {
		if cl, ok := apps[1].broker.Server.Clients.Get("sleeper"); !ok || !cl.Closed() {
			return fmt.Errorf("the session is not offline yet")
		}
		return nil
	})
	// Still routed: the offline session keeps its subscription.
	waitRoutes(t, apps[0], "sleeper/in", apps[1])
	p := testmqtt.Client(t, apps[0].mqttAddr(), "waker", true, true, nil)
	testmqtt.WaitToken(t, "publish", p.Publish("sleeper/in", 1, false, "while you slept"))
	testmqtt.Client(t, apps[1].mqttAddr(), "sleeper", false, true, onMsg)
	select {
	case m := <-got:
		if m != "while you slept" {
			t.Fatalf("received %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the queued message was not delivered")
	}
}

// TestClusterSlowSubscriber: QoS 1 messages from another node wait for a
// subscriber that has fallen behind (as a local publisher would) instead
// of being dropped at its full queue.
func TestClusterSlowSubscriber(t *testing.T) {
	apps := startCluster(t, 2, func(_ int, c *configs.Config) {
		// The test is about these bounds: small, so that they fill.
		c.MQTT.ClientQueueSize, c.MQTT.MaxInflight = 8, 8
		c.MQTT.BackpressureWait = 20 * time.Second
	})
	release := make(chan struct{})
	seen := map[string]bool{}
	var mu sync.Mutex
	s := testmqtt.Client(t, apps[1].mqttAddr(), "slow", true, true, func(m paho3.Message) {
		<-release // the subscriber reads nothing until released
		mu.Lock()
		seen[string(m.Payload())] = true
		mu.Unlock()
	})
	testmqtt.WaitToken(t, "subscribe", s.Subscribe("slow/t", 1, nil))
	waitRoutes(t, apps[0], "slow/t", apps[1])
	p := testmqtt.Client(t, apps[0].mqttAddr(), "fast", true, false, nil)
	const total = 200
	for i := 0; i < total; i++ {
		testmqtt.WaitToken(t, "publish", p.Publish("slow/t", 1, false, fmt.Sprint(i)))
	}
	close(release)
	checkFor(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != total {
			return fmt.Errorf("%d of %d messages delivered", len(seen), total)
		}
		return nil
	})
	if d := atomic.LoadInt64(&apps[1].broker.Server.Info.MessagesDropped); d != 0 {
		t.Fatalf("%d messages dropped", d)
	}
}

// TestClusterDurableQueue: nodes on their own SQLite files. A QoS 1
// message published on node 2 for a persistent session offline on node 1
// is in that session's queue when its PUBACK arrives (node 1 committed it
// before node 2 acknowledged), and the session gets all of them when it
// comes back.
func TestClusterDurableQueue(t *testing.T) {
	apps := startCluster(t, 2, nil)
	got := make(chan string, 100)
	sub := testmqtt.Client(t, apps[0].mqttAddr(), "dq-sub", false, true, func(m paho3.Message) { got <- string(m.Payload()) })
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("dq/#", 1, nil))
	waitRoutes(t, apps[1], "dq/x", apps[0])
	sub.Disconnect(250)
	queued := func() int {
		for _, s := range apps[0].store.Sessions() {
			if s.ClientID == "dq-sub" && !s.Online {
				return s.Queued
			}
		}
		return -1
	}
	checkFor(t, 10*time.Second, func() error {
		if n := queued(); n != 0 {
			return fmt.Errorf("session dq-sub: %d queued (-1: not offline yet)", n)
		}
		return nil
	})
	pub := testmqtt.Client(t, apps[1].mqttAddr(), "dq-pub", true, true, nil)
	for i := range 20 {
		testmqtt.WaitToken(t, "publish", pub.Publish(fmt.Sprintf("dq/%d", i), 1, false, fmt.Sprintf("m%d", i)))
		if n := queued(); n != i+1 {
			t.Fatalf("after the PUBACK of message %d: %d queued on node 1, want %d", i, n, i+1)
		}
	}
	testmqtt.Client(t, apps[0].mqttAddr(), "dq-sub", false, true, func(m paho3.Message) { got <- string(m.Payload()) })
	for i := range 20 {
		select {
		case p := <-got:
			if p != fmt.Sprintf("m%d", i) {
				t.Fatalf("received %q, want m%d", p, i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message m%d not delivered", i)
		}
	}
}

// TestClusterCopiedRetainedRestart: a retained message a node copied from
// another when it joined (published before it started) is in its own
// store: restarted alone, it serves it.
func TestClusterCopiedRetainedRestart(t *testing.T) {
	apps := startCluster(t, 1, nil)
	p := connectClient(t, apps[0], clientSpec{3, "tcp"}, nil)
	p.publish(t, "state/lamp", "on", 1, true)

	cfg := testConfig(t)
	cfg.Cluster.Node, cfg.Cluster.Listen, cfg.Cluster.Secret = "node2", "127.0.0.1:0", testClusterSecret
	cfg.Cluster.Peers = []string{apps[0].cluster.RouteAddr()}
	b := startTestApp(t, cfg)
	checkFor(t, 20*time.Second, func() error {
		if len(b.broker.Server.Topics.Messages("state/lamp")) != 1 {
			return fmt.Errorf("node2 has not copied state/lamp")
		}
		return b.clusterHealthy()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := apps[0].shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	b = startTestApp(t, cfg) // alone: node1 is gone
	if m := b.broker.Server.Topics.Messages("state/lamp"); len(m) != 1 || string(m[0].Payload) != "on" {
		t.Fatalf("node2 restarted alone holds %d messages on state/lamp, want its copy", len(m))
	}
}

// TestClusterDelayedWillCancelledElsewhere: a will waiting out its Will
// Delay Interval on one node is cancelled when its client connects to
// another node before the delay ends [MQTT-3.1.3-9], whether the first
// connection had ended (the will waiting) or was live (taken over, its
// will left as it ends). Another client's will, left the same way with a
// longer delay, goes: nothing of the moved clients' came before it.
func TestClusterDelayedWillCancelledElsewhere(t *testing.T) {
	apps := startCluster(t, 2, nil)
	var got []string
	box := make(chan string, 10)
	testmqtt.Client(t, apps[0].mqttAddr(), "watcher", true, true, func(m paho3.Message) { box <- string(m.Payload()) }).
		Subscribe("wills/#", 1, nil).Wait()
	offline := willConn5(t, apps[0].mqttAddr(), "offline", 2)
	live := willConn5(t, apps[0].mqttAddr(), "live", 2)
	offline.Close()
	checkFor(t, 10*time.Second, func() error {
		if cl, ok := apps[0].broker.Server.Clients.Get("offline"); !ok || !cl.Closed() {
			return fmt.Errorf("the first connection has not ended yet")
		}
		return nil
	})
	willConn5(t, apps[1].mqttAddr(), "offline", 0)
	willConn5(t, apps[1].mqttAddr(), "live", 0) // takes live over
	t.Cleanup(func() { live.Close() })
	willConn5(t, apps[0].mqttAddr(), "control", 3).Close()
	for {
		select {
		case p := <-box:
			got = append(got, p)
		case <-time.After(20 * time.Second):
			t.Fatalf("no will after 20 s (got %q)", got)
		}
		if got[len(got)-1] == "control" {
			break
		}
	}
	if len(got) > 1 {
		t.Fatalf("wills %q, want only the control's: a moved client's will went", got)
	}
}

// willConn5 connects an MQTT 5 client to addr with a persistent session
// (5 minutes) and, with a delay > 0, a will on wills/{id} (its id as
// payload) with that Will Delay Interval. Closing the connection without
// a DISCONNECT leaves the will.
func willConn5(t *testing.T, addr, id string, delay uint32) net.Conn {
	t.Helper()
	conn := dialTCP(t, addr)
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	expiry := uint32(300)
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}}
	if delay > 0 {
		cp.WillMessage = &paho.WillMessage{Topic: "wills/" + id, Payload: []byte(id), QoS: 1}
		cp.WillProperties = &paho.WillProperties{WillDelayInterval: &delay}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ca, err := c.Connect(ctx, cp); err != nil || ca.ReasonCode != 0 {
		conn.Close()
		t.Fatalf("connect %s: %v %+v", id, err, ca)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
