package listeners

import (
	"net"
	"testing"
	"time"

	mqttl "github.com/mochi-mqtt/server/v2/listeners"
)

// TestCloseAfterCloseConnsSkipsLookup: the engine's Close hook asks the
// engine to disconnect the listener's clients only while the listener
// may still have some. Once CloseConns has ended them all (as
// Broker.Shutdown does before Server.Close), it does not: the engine's
// lookup (Clients.GetByListener) can deadlock against a client's removal
// (docs/upstream.md item 20), and there is nothing left for it to find.
func TestCloseAfterCloseConnsSkipsLookup(t *testing.T) {
	for _, drain := range []bool{false, true} {
		l := NewTCP("127.0.0.1:0", &TCPOptions{ConnectTimeout: 5 * time.Second})
		if err := l.Init(nil); err != nil {
			t.Fatal(err)
		}
		go l.Serve(func(id string, c net.Conn) error { return nil })
		l.Stop()
		if drain {
			l.CloseConns()
		}
		var looked []string
		l.Close(mqttl.CloseFn(func(id string) { looked = append(looked, id) }))
		if want := !drain; (len(looked) == 1) != want {
			t.Errorf("CloseConns called: %v; the engine asked to look up clients %d times, want %v", drain, len(looked), want)
		}
	}
}
