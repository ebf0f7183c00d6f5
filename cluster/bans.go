package cluster

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/addrkey"
)

// Subjects of the cluster's one login throttle and ban list (ShareBans).
const (
	subjRefused  = "tether.sec.refused" // a refusal seen by a node
	subjBan      = "tether.sec.ban"     // a ban decided by a node
	subjLift     = "tether.sec.lift"    // a ban lifted on a node
	subjBanState = "tether.sec.state"   // send me your bans (a request)
	subjCleared  = "tether.sec.cleared" // a login cleared its name's failures
)

// banChunk is how many bans one answer to a state request carries.
const banChunk = 1000

type refusedMsg struct {
	Node    string          `json:"node"`
	Refusal devices.Refusal `json:"refusal"`
}

type clearedMsg struct {
	Node    string `json:"node"`
	Name    string `json:"name"`
	Address string `json:"address"`
}

type banMsg struct {
	Node string      `json:"node"`
	Ban  devices.Ban `json:"ban"`
}

type liftMsg struct {
	Node  string    `json:"node"`
	Key   string    `json:"key"`
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
}

type stateMsg struct {
	Node  string           `json:"node"`
	State devices.BanState `json:"state"`
}

// ShareBans makes the login throttle and the bans of this node the
// cluster's: each refusal seen here (failed login, ACL denial) is sent
// to every node, which counts it in its throttle (limiter) and towards
// its bans as if seen there; a ban is decided by the node whose refusal
// reaches the threshold, which audits it and sends it to every node,
// where it ends the banned key's connections and refuses it; a ban lifted
// on one node is lifted on all; a correct login that clears its name's
// failures at its address clears them on every node. A node that starts, comes back to the
// bus, or hears a node it did not (a route that was down) asks every
// node for its bans in force and lifts, and takes them up. The policy
// stays devices.LoginLimiter's and devices.Bans': this only carries
// their events.
func (n *Node) ShareBans(bans *devices.Bans, limiter *devices.LoginLimiter) error {
	for _, s := range []struct {
		subject string
		fn      nats.MsgHandler
	}{
		{subjRefused, func(m *nats.Msg) {
			var r refusedMsg
			if json.Unmarshal(m.Data, &r) != nil || r.Node == n.name || !validName(r.Node) {
				return
			}
			r.Refusal.Node = r.Node
			if r.Refusal.Kind == "login" && addrkey.Valid(r.Refusal.Address) && limiter != nil {
				limiter.FailedElsewhere(r.Refusal.Identity, r.Refusal.Address)
			}
			bans.RefusedElsewhere(r.Refusal)
		}},
		{subjBan, func(m *nats.Msg) {
			var b banMsg
			if json.Unmarshal(m.Data, &b) != nil || b.Node == n.name || !validName(b.Node) {
				return
			}
			b.Ban.Node = b.Node
			if bans.Adopt(b.Ban) {
				n.log.Info("ban from another node", "ban", b.Ban.Key, "from", b.Node)
			}
		}},
		{subjLift, func(m *nats.Msg) {
			var l liftMsg
			if json.Unmarshal(m.Data, &l) != nil || l.Node == n.name || !validName(l.Node) {
				return
			}
			bans.LiftElsewhere(l.Key, l.Since, l.Until)
		}},
		{subjBanState, func(m *nats.Msg) { n.sendBanState(bans, m) }},
		{subjCleared, func(m *nats.Msg) {
			var c clearedMsg
			if json.Unmarshal(m.Data, &c) != nil || c.Node == n.name || !validName(c.Node) || limiter == nil {
				return
			}
			limiter.SucceededElsewhere(c.Name, c.Address)
		}},
	} {
		// The subscriptions end with the connection (Close).
		if _, err := n.nc.Subscribe(s.subject, s.fn); err != nil {
			return fmt.Errorf("cluster: subscribe %s: %w", s.subject, err)
		}
	}
	bans.Share(banShare{n})
	if limiter != nil {
		limiter.OnCleared(func(name, addr string) {
			n.publishJSON(subjCleared, clearedMsg{Node: n.name, Name: name, Address: addr})
		})
	}
	n.wg.Add(1)
	go n.banSyncer(bans)
	return nil
}

// banShare sends this node's refusals, bans and lifts (devices.BanShare).
type banShare struct{ n *Node }

func (s banShare) Refused(r devices.Refusal) {
	s.n.publishJSON(subjRefused, refusedMsg{Node: s.n.name, Refusal: r})
}

func (s banShare) Banned(b devices.Ban) { s.n.publishJSON(subjBan, banMsg{Node: s.n.name, Ban: b}) }

func (s banShare) Lifted(b devices.Ban) {
	s.n.publishJSON(subjLift, liftMsg{Node: s.n.name, Key: b.Key, Since: b.Since, Until: b.Until})
}

// sendBanState answers a state request: this node's bans and lifts, in
// chunks that fit the bus's payload limit.
func (n *Node) sendBanState(bans *devices.Bans, m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	st := bans.State()
	for first := true; first || len(st.Bans) > 0; first = false {
		chunk := devices.BanState{Bans: st.Bans[:min(banChunk, len(st.Bans))]}
		if first {
			chunk.Lifts = st.Lifts
		}
		st.Bans = st.Bans[len(chunk.Bans):]
		b, err := json.Marshal(stateMsg{Node: n.name, State: chunk})
		if err == nil {
			err = n.nc.Publish(m.Reply, b)
		}
		if err != nil {
			return
		}
	}
}

// banSyncer asks the other nodes for their bans whenever this node
// connects or reconnects to the bus, or hears a node it did not hear a
// second before.
func (n *Node) banSyncer(bans *devices.Bans) {
	defer n.wg.Done()
	t := time.NewTicker(beatEvery)
	defer t.Stop()
	heard := map[string]bool{}
	reconnects := ^uint64(0)
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if n.nc.Status() != nats.CONNECTED {
			continue
		}
		now := map[string]bool{}
		fresh := false
		for _, p := range *n.peers.Load() {
			now[p.inst] = true
			fresh = fresh || !heard[p.inst]
		}
		heard = now
		if rc := n.nc.Stats().Reconnects; rc != reconnects {
			reconnects, fresh = rc, true
		}
		if fresh && len(now) > 0 {
			n.syncBans(bans)
		}
	}
}

// syncBans asks every node for its bans and lifts and merges them.
func (n *Node) syncBans(bans *devices.Bans) {
	inbox := n.nc.NewRespInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return
	}
	defer sub.Unsubscribe()
	if err := n.nc.PublishRequest(subjBanState, inbox, nil); err != nil {
		return
	}
	for {
		m, err := sub.NextMsg(claimWait)
		if err != nil {
			return
		}
		var st stateMsg
		if json.Unmarshal(m.Data, &st) != nil || st.Node == n.name || !validName(st.Node) {
			continue
		}
		for i := range st.State.Bans {
			if st.State.Bans[i].Node == "" {
				st.State.Bans[i].Node = st.Node
			}
		}
		bans.Merge(st.State)
	}
}
