package cluster

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// An admin deletes a client id's session through one node's API (DELETE
// /api/v1/sessions/{clientId}); the session may be on any node, on more
// than one (without a shared store, a client that came back through
// another node left its offline session on the first), or moving. So the
// node asks every node (DeleteSession), and each ends its own session
// under that client id with its access hook's purge, the one every purge
// goes through, and answers whether it held one.

// subjDeleteSession is the request to end a client id's session.
const subjDeleteSession = "tether.sessions.delete"

// deleteWait bounds how long DeleteSession waits for the nodes' answers:
// a node answers once the session is purged and committed, which takes
// it up to 2 s for a live connection to end and 2 s for its store.
const deleteWait = 5 * time.Second

type deleteRequest struct {
	Client string `json:"client"`
	Node   string `json:"node"`
}

type deleteReply struct {
	Node  string `json:"node"`
	Found bool   `json:"found"`
}

// ShareSessionDeletes makes this node end its own session under a client
// id when another node deletes it (DeleteSession): del is this node's
// deletion (broker.Auth.DeleteSession), reporting whether it held one.
func (n *Node) ShareSessionDeletes(del func(clientID string) bool) error {
	if _, err := n.nc.Subscribe(subjDeleteSession, func(m *nats.Msg) {
		var r deleteRequest
		if json.Unmarshal(m.Data, &r) != nil || r.Client == "" || r.Node == n.name || m.Reply == "" {
			return
		}
		b, err := json.Marshal(deleteReply{Node: n.name, Found: del(r.Client)})
		if err == nil {
			_ = m.Respond(b)
		}
	}); err != nil {
		return fmt.Errorf("cluster: subscribe %s: %w", subjDeleteSession, err)
	}
	return nil
}

// DeleteSession asks every other node heard in the last beats to end its
// session under clientID and waits for their answers, at most
// deleteWait: found is true when one of them held one; complete is false
// when a node did not answer (it may hold one) or the bus is down.
func (n *Node) DeleteSession(clientID string) (found, complete bool) {
	want := map[string]bool{}
	now := time.Now()
	for _, p := range *n.peers.Load() {
		if now.Sub(p.seen) <= beatGap {
			want[p.name] = true
		}
	}
	if len(want) == 0 {
		return false, true
	}
	if n.nc.Status() != nats.CONNECTED {
		return false, false
	}
	data, err := json.Marshal(deleteRequest{Client: clientID, Node: n.name})
	if err != nil {
		return false, false
	}
	inbox := n.nc.NewRespInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return false, false
	}
	defer sub.Unsubscribe()
	if err := n.nc.PublishRequest(subjDeleteSession, inbox, data); err != nil {
		return false, false
	}
	deadline := time.Now().Add(deleteWait)
	for len(want) > 0 {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			n.log.Warn("session delete: not every node answered", "client", clientID, "missing", len(want))
			return found, false
		}
		var r deleteReply
		if json.Unmarshal(m.Data, &r) != nil || r.Node == n.name || !validName(r.Node) {
			continue
		}
		found = found || r.Found
		delete(want, r.Node)
	}
	return found, true
}
