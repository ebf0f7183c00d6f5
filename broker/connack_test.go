package broker

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/devices"
)

// TestConnackNotWritten: a client that sends its CONNECT and resets its
// connection while the broker checks its password (a costly hash) never
// gets its CONNACK: the engine fails to write it and leaves without the
// hooks' OnDisconnect. The broker forgets it all the same: the access
// hook holds no entry for it (its identity, its claim on the client id),
// nor does GET /clients' clock, and the engine lists no session under its
// client id (its session, clean, ended with the connection), in MQTT
// 3.1.1 and 5.
func TestConnackNotWritten(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{})
	e.reg.SetPasswordCost(bcrypt.DefaultCost) // 50 ms or more a check
	pass := e.user(t, "slow", devices.RoleAdmin)
	e.reg.SetPasswordCost(bcrypt.MinCost)
	for _, v := range []byte{4, 5} {
		for i := range 2 {
			id := fmt.Sprintf("reset-%d-%d", v, i)
			var buf bytes.Buffer
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: v,
				Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: id,
					UsernameFlag: true, Username: []byte("slow"), PasswordFlag: true, Password: []byte(pass)}}
			if err := pk.ConnectEncode(&buf); err != nil {
				t.Fatal(err)
			}
			in := e.b.TCP.Stats().BytesIn.Load()
			c, err := net.Dial("tcp", e.tcp)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(buf.Bytes()); err != nil {
				t.Fatal(err)
			}
			// Once the broker has read the CONNECT: reset.
			checkFor(t, 5*time.Second, func() error {
				if e.b.TCP.Stats().BytesIn.Load() < in+int64(buf.Len()) {
					return fmt.Errorf("%s: CONNECT not read yet", id)
				}
				return nil
			})
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			// The listener counts the connection open until the engine
			// is done with it (a password check takes seconds under
			// -race on a loaded machine).
			checkFor(t, 60*time.Second, func() error {
				if n := e.b.TCP.Stats().Open.Load(); n != 0 {
					return fmt.Errorf("%s: %d connections open", id, n)
				}
				return nil
			})
			if n := authEntries(e.auth, id); n != 0 {
				t.Errorf("%s: the access hook holds %d entries for it", id, n)
			}
			e.b.clock.mu.Lock()
			for cl := range e.b.clock.at {
				if cl.ID == id {
					t.Errorf("%s: the client clock still lists it", id)
				}
			}
			e.b.clock.mu.Unlock()
			if cl, ok := e.b.Server.Clients.Get(id); ok {
				t.Errorf("%s: the engine lists its session (closed %v)", id, cl.Closed())
			}
		}
	}
}

// authEntries counts the access hook's entries for client id: its
// connections, its expiries, its claims.
func authEntries(a *Auth, id string) int {
	n := 0
	a.clients.Range(func(k, _ any) bool {
		if k.(*mqtt.Client).ID == id {
			n++
		}
		return true
	})
	if _, ok := a.claims.Load(id); ok {
		n++
	}
	return n
}
