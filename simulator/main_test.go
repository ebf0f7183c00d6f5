package simulator

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.uber.org/goleak"

	"github.com/tether-iot/tether/internal/testmqtt"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testBroker is an in-process mochi broker that allows every client: the
// broker under test. Tests use it instead of Tether's broker because the
// simulator must work against any MQTT broker and may not import Tether's.
type testBroker struct {
	*mochi.Server
	tcp, ws string // listener addresses
}

// startBroker starts a broker with TCP and WebSocket listeners on
// 127.0.0.1:0 and closes it when the test ends. Without auth, it lets
// every client in; auth replaces that.
func startBroker(t testing.TB, auth ...mochi.Hook) *testBroker {
	t.Helper()
	srv := mochi.New(&mochi.Options{
		InlineClient: true,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if len(auth) == 0 {
		auth = []mochi.Hook{new(allowHook)}
	}
	for _, h := range auth {
		if err := srv.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatal(err)
	}
	ws := listeners.NewWebsocket(listeners.Config{ID: "ws", Address: freeAddr(t)})
	if err := srv.AddListener(ws); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testmqtt.CloseEngine(srv) })
	return &testBroker{Server: srv, tcp: tcp.Address(), ws: ws.Address()}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testmqtt.CheckFor(t, within, func() error {
		if !cond() {
			return fmt.Errorf("waiting for %s", what)
		}
		return nil
	})
}

// freeAddr returns a loopback address with a port that was free a moment
// ago, for listeners that cannot report the port they got for :0.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// allowHook lets every client connect, publish and subscribe. It is
// mochi's auth.AllowHook, written out because that package pulls in
// gopkg.in/yaml.v3, which is not in go.sum.
type allowHook struct{ mochi.HookBase }

func (h *allowHook) ID() string { return "allow-all" }

func (h *allowHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *allowHook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (h *allowHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }
