package cluster

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tether-iot/tether/broker/info"
)

// Subjects of the cluster's listings (ShareListings): a request; each
// node answers with its items in chunks, the last one marked done.
const (
	subjListClients  = "tether.list.clients"
	subjListSessions = "tether.list.sessions"
)

// listChunk is how many items one answer carries.
const listChunk = 2000

type listAnswer[T any] struct {
	Node  string `json:"node"`
	Items []T    `json:"items,omitempty"`
	Done  bool   `json:"done,omitempty"`
}

// ShareListings makes this node answer the other nodes' listings of
// connected clients and persistent sessions with its own (clients and
// sessions: the broker's and the session store's), so that GET /clients
// and GET /sessions on any node list the cluster's (Clients, Sessions).
func (n *Node) ShareListings(clients func() []info.Client, sessions func() []info.Session) error {
	if _, err := n.nc.Subscribe(subjListClients, func(m *nats.Msg) { answerList(n, m, clients()) }); err != nil {
		return fmt.Errorf("cluster: subscribe %s: %w", subjListClients, err)
	}
	if _, err := n.nc.Subscribe(subjListSessions, func(m *nats.Msg) { answerList(n, m, sessions()) }); err != nil {
		return fmt.Errorf("cluster: subscribe %s: %w", subjListSessions, err)
	}
	return nil
}

// Clients lists the connected clients of every node (local: this node's
// own), each with its node's name; a node that does not answer within
// two seconds is left out (see gather).
func (n *Node) Clients(local []info.Client) []info.Client {
	for i := range local {
		local[i].Node = n.name
	}
	return gather(n, subjListClients, local, func(c *info.Client, node string) { c.Node = node })
}

// Sessions lists the persistent sessions of every node (local: this
// node's own), each with the node that holds it. A session seen on two
// nodes (it is moving) is listed once: online, or else as the node that
// sorts first holds it.
func (n *Node) Sessions(local []info.Session) []info.Session {
	for i := range local {
		local[i].Node = n.name
	}
	return onePerClient(gather(n, subjListSessions, local, func(s *info.Session, node string) { s.Node = node }))
}

// onePerClient keeps one session per client id: the online one, or else
// the one whose node sorts first.
func onePerClient(all []info.Session) []info.Session {
	seen := make(map[string]int, len(all))
	out := all[:0]
	for _, s := range all {
		i, dup := seen[s.ClientID]
		switch {
		case !dup:
			seen[s.ClientID] = len(out)
			out = append(out, s)
		case s.Online && !out[i].Online, s.Online == out[i].Online && s.Node < out[i].Node:
			out[i] = s
		}
	}
	return out
}

// answerList sends items to the asker in chunks that fit the bus.
func answerList[T any](n *Node, m *nats.Msg, items []T) {
	if m.Reply == "" {
		return
	}
	for {
		a := listAnswer[T]{Node: n.name, Items: items[:min(listChunk, len(items))]}
		items = items[len(a.Items):]
		a.Done = len(items) == 0
		b, err := json.Marshal(a)
		if err == nil {
			err = n.nc.Publish(m.Reply, b)
		}
		if err != nil || a.Done {
			return
		}
	}
}

// gather asks the nodes heard in the last beats for their items and
// adds them to local, setting each item's node. It waits for every such
// node's last chunk, at most claimWait: a node going away does not hold
// the listing up (its items are then left out, and logged).
func gather[T any](n *Node, subject string, local []T, setNode func(*T, string)) []T {
	want := map[string]bool{}
	now := time.Now()
	for _, p := range *n.peers.Load() {
		if now.Sub(p.seen) <= 2*beatEvery+beatEvery/2 {
			want[p.name] = true
		}
	}
	if len(want) == 0 || n.nc.Status() != nats.CONNECTED {
		return local
	}
	inbox := n.nc.NewRespInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return local
	}
	defer sub.Unsubscribe()
	if err := n.nc.PublishRequest(subject, inbox, nil); err != nil {
		return local
	}
	deadline := time.Now().Add(claimWait)
	for len(want) > 0 {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			n.log.Warn("listing: not every node answered", "subject", subject, "missing", len(want))
			return local
		}
		var a listAnswer[T]
		if json.Unmarshal(m.Data, &a) != nil || a.Node == n.name || !validName(a.Node) {
			continue
		}
		for i := range a.Items {
			setNode(&a.Items[i], a.Node)
		}
		local = append(local, a.Items...)
		if a.Done {
			delete(want, a.Node)
		}
	}
	return local
}
