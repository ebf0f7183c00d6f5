package cluster

import (
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tether-iot/tether/broker"
)

type claimRequest struct {
	Client string              `json:"client"`
	Node   string              `json:"node"`
	Owner  broker.SessionOwner `json:"owner"`
}

type claimReply struct {
	Node string `json:"node"`
	OK   bool   `json:"ok"`
}

// Claim asks every other node whether a client connecting here as o may
// have clientID (broker.Auth.SetClaimElsewhere): false when one of them
// holds that client id's session for another identity. Each node that
// grants it disconnects its own live connection with that id. Only the
// nodes heard in the last two beats are waited for, and none for more
// than two seconds: a node going away does not hold CONNECTs up.
func (n *Node) Claim(clientID string, o broker.SessionOwner) bool {
	want := 0
	now := time.Now()
	for _, p := range *n.peers.Load() {
		if now.Sub(p.seen) <= 2*beatEvery+beatEvery/2 {
			want++
		}
	}
	if want == 0 || n.nc.Status() != nats.CONNECTED {
		return true
	}
	data, err := json.Marshal(claimRequest{Client: clientID, Node: n.name, Owner: o})
	if err != nil {
		return true
	}
	inbox := n.nc.NewRespInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return true
	}
	defer sub.Unsubscribe()
	if err := n.nc.PublishRequest(subjClaim, inbox, data); err != nil {
		return true
	}
	deadline := time.Now().Add(claimWait)
	for got := 0; got < want; got++ {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			n.log.Debug("claim: not every node answered", "client", clientID, "answers", got, "nodes", want)
			return true
		}
		var r claimReply
		if json.Unmarshal(m.Data, &r) == nil && !r.OK {
			return false
		}
	}
	return true
}

// onClaim answers another node's Claim.
func (n *Node) onClaim(m *nats.Msg) {
	var c claimRequest
	if json.Unmarshal(m.Data, &c) != nil || c.Client == "" || c.Node == n.name || m.Reply == "" {
		return
	}
	ok := true
	if f := n.yield.Load(); f != nil {
		ok = (*f)(c.Client, c.Owner, c.Node < n.name)
	} else if srv := n.srv.Load(); srv != nil {
		if cl, live := srv.Clients.Get(c.Client); live && !cl.Net.Inline && !cl.Closed() {
			broker.TakeOver(srv, cl)
		}
	}
	b, _ := json.Marshal(claimReply{Node: n.name, OK: ok})
	_ = m.Respond(b)
}
