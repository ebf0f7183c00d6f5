package broker

import (
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// In a cluster a client id is unique across the nodes (SPEC §10): the
// node a client connects to asks the others (SetClaimElsewhere), and each
// applies the session owner rules above to its own sessions
// (YieldSession): another identity's session refuses the newcomer with
// 0x85, as on one node; the same identity's live connection is
// disconnected with 0x8E (session taken over), and a will left here
// waiting out its delay is cancelled.

// SessionOwner is who a connection is, as another node needs it to apply
// the session owner rules: an identity's kind and name, or anonymous.
type SessionOwner struct {
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Anonymous bool   `json:"anonymous,omitempty"`
}

// SetClaimElsewhere makes every accepted CONNECT also ask claim (the
// cluster's other nodes) whether its identity may have the client id; a
// refusal refuses the CONNECT as another identity's session does.
func (a *Auth) SetClaimElsewhere(claim func(clientID string, o SessionOwner) bool) {
	a.elsewhere.Store(&claim)
}

// claimElsewhere asks the other nodes, if any, for cl's client id.
func (a *Auth) claimElsewhere(cl *mqtt.Client, c *conn) bool {
	f := a.elsewhere.Load()
	if f == nil {
		return true
	}
	o := SessionOwner{Anonymous: c.anonymous}
	if !c.anonymous {
		o.Kind, o.Name = c.id.Kind, c.id.Name
	}
	if (*f)(cl.ID, o) {
		return true
	}
	a.unclaim(cl)
	a.log.Info("refused a connection to another identity's session on another node", "client", cl.ID,
		"kind", c.kind(), "name", c.id.Name)
	return false
}

// YieldSession is this node's answer to another node where a client with
// clientID connects as o: false when the session here belongs to another
// identity; else true, and a live connection here with that client id is
// disconnected (0x8E session taken over; 3.1.1 clients are closed), and
// the will its connection left here with a delay is cancelled
// (movedAway).
//
// A CONNECT with that client id being accepted here at the same moment
// (both nodes asking each other) is a tie, which first settles the same
// way on both nodes (the cluster compares the node names): when the
// asker goes first, the connection here is closed and the asker's
// granted; else the asker's is refused.
func (a *Auth) YieldSession(clientID string, o SessionOwner, first bool) bool {
	c := &conn{anonymous: o.Anonymous, clientID: clientID}
	if !o.Anonymous {
		c.id = devices.Identity{Kind: o.Kind, Name: o.Name}
	}
	a.ownMu.Lock()
	ok := a.mayOwn(clientID, nil, c)
	var pending *mqtt.Client
	if v, claimed := a.claims.Load(clientID); ok && claimed && !v.(*claim).cl.Closed() {
		// Still connecting, unless the engine lists it already: it
		// does before the CONNACK, and drops the claim only after it
		// (OnSessionEstablished), so a client can have its CONNACK
		// here and connect to another node while its claim stands.
		// That is not a tie but a later connection: it takes over.
		if ex, listed := a.srv.Clients.Get(clientID); !listed || ex != v.(*claim).cl {
			pending = v.(*claim).cl
		}
	}
	a.ownMu.Unlock()
	if !ok {
		return false
	}
	if pending != nil {
		if !first {
			a.log.Info("refused a connection on another node: the same client id is connecting here", "client", clientID)
			return false
		}
		pending.Stop(packets.ErrSessionTakenOver)
	}
	ex, listed := a.srv.Clients.Get(clientID)
	if listed && !ex.Net.Inline {
		a.movedAway(ex)
	}
	if listed && !ex.Net.Inline && !ex.Closed() {
		a.log.Info("session taken over on another node", "client", clientID)
		TakeOver(a.srv, ex)
	}
	return true
}

// movedAway cancels the will that ex, the connection here with a client
// id that connects on another node, left waiting out its Will Delay
// Interval, as a new connection cancels it on one node [MQTT-3.1.3-9]:
// the will waiting now, or the one ex leaves as its connection ends
// (OnDisconnect), the engine taking it before. Granting the claim
// cancels it, before the other node's CONNACK: a connection refused
// there after all (by yet another node) has cancelled it too.
func (a *Auth) movedAway(ex *mqtt.Client) {
	if a.conn(ex) != nil { // its OnDisconnect is to come
		a.moved.Store(ex, struct{}{})
		if a.conn(ex) == nil { // or came meanwhile
			a.moved.Delete(ex)
		}
	}
	a.cancelWill(ex)
}

// TakeOver disconnects cl because its client id connected elsewhere. The
// DISCONNECT's write is bounded: a client that reads nothing must not
// hold up the caller (the bus's claims).
func TakeOver(srv *mqtt.Server, cl *mqtt.Client) {
	if cl.Properties.ProtocolVersion == 5 {
		if cl.Net.Conn != nil {
			_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		}
		_ = srv.DisconnectClient(cl, packets.ErrSessionTakenOver)
		return
	}
	cl.Stop(packets.ErrSessionTakenOver)
}
