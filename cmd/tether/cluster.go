package main

import (
	"context"
	"errors"
	"sort"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/cluster"
	"github.com/tether-iot/tether/devices"
)

// The cluster's part of a running Tether (SPEC §10, cluster/): a.cluster
// is nil, and every function here a no-op, when cfg.Cluster is not
// enabled.

// joinCluster starts this node's bus (embedded NATS, or the connection
// to an external one), before the broker is built, and makes the access
// hook ask the other nodes for each client id (and answer theirs). It
// stops after the broker: the broker's last wills still cross.
func (a *app) joinCluster() (err error) {
	cfg := a.cfg
	if !cfg.Cluster.Enabled() {
		return nil
	}
	a.cluster, err = cluster.New(cluster.Options{
		Node: cfg.Cluster.Node, Listen: cfg.Cluster.Listen, Peers: cfg.Cluster.Peers, Secret: cfg.Cluster.Secret, NATSURL: cfg.Cluster.NATSURL,
		TLSCert: cfg.Cluster.TLSCert, TLSKey: cfg.Cluster.TLSKey, TLSCA: cfg.Cluster.TLSCA,
		MaxPayload: int(cfg.MQTT.MaxPacketSize) + 64<<10, FlowWait: cfg.MQTT.BackpressureWait, MaxTopicLevels: cfg.MQTT.MaxTopicLevels, Logger: a.base,
	})
	if err != nil {
		return err
	}
	a.onStop(func(context.Context) error { return a.cluster.Close() })
	// One login throttle and one ban list for the cluster: each node's
	// refusals count on every node, a ban or its lifting applies on all.
	if err := a.cluster.ShareBans(a.bans, a.logins); err != nil {
		return err
	}
	// With a shared session store (PostgreSQL), a persistent session
	// follows its client: the node that holds it lets it go when it
	// yields (Release), the node the client connects to takes it from
	// the database once the others have answered (Adopt), and the
	// sessions of a node that is gone are taken by the others
	// (AdoptOrphans), which serve their subscriptions meanwhile.
	a.auth.SetClaimElsewhere(a.claimSession)
	a.cluster.SetYield(func(id string, o broker.SessionOwner, first bool) bool {
		if !a.auth.YieldSession(id, o, first) {
			return false
		}
		a.store.Release(id)
		return true
	})
	// A QoS 1/2 message for a persistent session on another node is
	// committed there before its publisher's acknowledgement.
	a.cluster.SetDurability(cluster.Durability{Persistent: a.store.Persistent, Barrier: a.store.Barrier})
	// Retained messages copied from the other nodes (and deletions) are
	// written to this node's store as the ones routed here are, and
	// counted towards the retained bounds (never refused: each node
	// holds its own clients to them, and takes what the others took).
	a.cluster.SetRetainedStore(func(pk packets.Packet) {
		a.store.PutRetained(pk)
		a.retainLimit.Sync(pk.TopicName)
	})
	a.cluster.SetNodeGone(func(node string) {
		for _, name := range a.store.AdoptOrphans(node) {
			// Its owner may be new to this node: the deliveries into
			// the session check its identity.
			a.registry.Refresh(context.Background(), name)
		}
	})
	return nil
}

// claimSession asks the other nodes for a connecting client's id, then
// takes its session from the shared store if another node held it. A
// session that moved meanwhile (another node took it from a node that
// is gone) is asked for again, from its new holder.
func (a *app) claimSession(id string, o broker.SessionOwner) bool {
	for range 3 {
		if !a.cluster.Claim(id, o) {
			return false
		}
		err := a.store.Adopt(id, o.Anonymous, o.Name, o.Kind == devices.KindDevice)
		if !errors.Is(err, sessions.ErrMoved) {
			return err == nil
		}
	}
	return false
}

// nodeName is this node's name: cluster.node, or in a cluster without one
// the host name the cluster uses (cluster.DefaultNode); alone, "".
func (a *app) nodeName() string {
	if a.cfg.Cluster.Node != "" || !a.cfg.Cluster.Enabled() {
		return a.cfg.Cluster.Node
	}
	return cluster.DefaultNode()
}

// clusterHooks are the engine hooks of the node.
func (a *app) clusterHooks() []mqtt.Hook {
	if a.cluster == nil {
		return nil
	}
	return []mqtt.Hook{a.cluster.Hook()}
}

// attachCluster starts the node's traffic once the broker runs.
func (a *app) attachCluster() error {
	if a.cluster == nil {
		return nil
	}
	return a.cluster.Attach(a.broker.Server)
}

// clusterHealthy is the node's part of /readyz.
func (a *app) clusterHealthy() error {
	if a.cluster == nil {
		return nil
	}
	return a.cluster.Healthy()
}

// clusterWarning is the node's part of /readyz's warnings.
func (a *app) clusterWarning() string {
	if a.cluster == nil {
		return ""
	}
	return a.cluster.Warning()
}

// clusterNodes lists the nodes for GET /broker; nil alone.
func (a *app) clusterNodes() func() []cluster.NodeInfo {
	if a.cluster == nil {
		return nil
	}
	return a.cluster.Nodes
}

// registerCluster adds the node's metrics to reg.
func (a *app) registerCluster(reg prometheus.Registerer) {
	if a.cluster != nil {
		reg.MustRegister(a.cluster)
	}
}

// metricsGatherer is what /metrics serves: in a cluster every series
// carries the label node="<cluster.node>", so that one Prometheus can
// scrape every node; alone, the registry as it is.
func (a *app) metricsGatherer(g prometheus.Gatherer) prometheus.Gatherer {
	if a.cluster == nil {
		return g
	}
	name, value := "node", a.cluster.Name()
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		mfs, err := g.Gather()
		for _, mf := range mfs {
			for _, m := range mf.Metric {
				m.Label = append(m.Label, &dto.LabelPair{Name: &name, Value: &value})
				sort.Slice(m.Label, func(i, j int) bool { return m.Label[i].GetName() < m.Label[j].GetName() })
			}
		}
		return mfs, err
	})
}
