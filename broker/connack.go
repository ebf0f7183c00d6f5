package broker

import (
	"errors"
	"reflect"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/listeners"
)

// The engine lists a client (Server.Clients) and calls OnSessionEstablish
// before it writes the CONNACK; when that write fails (the client reset
// its connection meanwhile, or a ban or a takeover stopped it), or the
// resending of its inflight messages does, it returns without the hooks'
// OnDisconnect and without ending the client's session as the connection
// ended (docs/upstream.md). Each hook then kept what it holds for the
// connection (the access hook its identity, its claim on the client id,
// its expiry), and the engine listed a session that should have ended
// with it (a clean one) until the longest session expiry. connackWatch
// catches that as the listener's connection ends (listeners.OnEngineDone)
// and ends the client as the engine would have: every hook's
// OnDisconnect, then a session that ends with its connection is removed.
// A will is not sent: the client never had its CONNACK.
type connackWatch struct {
	mqtt.HookBase
	srv *mqtt.Server
}

func (w *connackWatch) ID() string { return "tether-connack-watch" }

func (w *connackWatch) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish || b == mqtt.OnDisconnect
}

// OnSessionEstablish has cl ended (lostConnack) if the engine leaves it
// without OnDisconnect.
func (w *connackWatch) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if cl.Net.Conn != nil {
		listeners.OnEngineDone(cl.Net.Conn, func(err error) { w.lostConnack(cl, err) })
	}
}

// OnDisconnect: the engine ended cl itself.
func (w *connackWatch) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if cl.Net.Conn != nil {
		listeners.OnEngineDone(cl.Net.Conn, nil)
	}
}

// errConnackLost is the error the hooks' OnDisconnect get for a client the
// engine left without its CONNACK, when the engine gave none.
var errConnackLost = errors.New("the CONNACK could not be sent")

// lostConnack ends cl, whose connection the engine is done with without
// having called OnDisconnect, as the end of the engine's attachClient
// would have.
func (w *connackWatch) lostConnack(cl *mqtt.Client, err error) {
	hooks := engineHooks(w.srv)
	if hooks == nil {
		return
	}
	if err == nil {
		err = errConnackLost
	}
	expire := (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0) ||
		(cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean)
	hooks.OnDisconnect(cl, err, expire)
	if expire && !cl.IsTakenOver() {
		cl.ClearInflights()
		w.srv.UnsubscribeClient(cl)
		if cur, ok := w.srv.Clients.Get(cl.ID); ok && cur == cl {
			w.srv.Clients.Delete(cl.ID)
		}
	}
}

// engineHooksIndex is the index of the engine's hooks (Server.hooks) in
// mqtt.Server; nil if this engine version has none (then lostConnack does
// nothing).
var engineHooksIndex = func() []int {
	f, ok := reflect.TypeOf(mqtt.Server{}).FieldByName("hooks")
	if !ok || f.Type != reflect.TypeOf((*mqtt.Hooks)(nil)) {
		return nil
	}
	return f.Index
}()

// engineHooks returns the engine's hooks, or nil.
func engineHooks(srv *mqtt.Server) *mqtt.Hooks {
	if engineHooksIndex == nil {
		return nil
	}
	f := reflect.ValueOf(srv).Elem().FieldByIndex(engineHooksIndex)
	return *(**mqtt.Hooks)(unsafe.Pointer(f.UnsafeAddr()))
}
