package main

import (
	"github.com/tether-iot/tether/broker/info"
	"github.com/tether-iot/tether/cluster"
	"github.com/tether-iot/tether/dashboard"
)

// In a cluster, GET /clients and GET /sessions (and a device's export)
// list every node's clients and sessions, each naming its node: the API
// is given these views of the broker and the session store, which ask
// the other nodes (cluster.Node.ShareListings). Alone, the API gets the
// broker and the store themselves.

// clusterBroker is the broker whose Clients are the cluster's.
type clusterBroker struct {
	dashboard.Broker
	n *cluster.Node
}

func (b clusterBroker) Clients() []info.Client { return b.n.Clients(b.Broker.Clients()) }

// clusterSessions is the session store whose Sessions are the cluster's.
type clusterSessions struct {
	store dashboard.Sessions
	n     *cluster.Node
}

func (s clusterSessions) Sessions() []info.Session { return s.n.Sessions(s.store.Sessions()) }

func (s clusterSessions) QueueStoreUse() (used, limit int64) { return s.store.QueueStoreUse() }

// apiViews are the broker and the session store as the API sees them;
// in a cluster, this node answers the others' listings from then on.
func (a *app) apiViews() (dashboard.Broker, dashboard.Sessions, error) {
	if a.cluster == nil {
		return a.broker, a.store, nil
	}
	if err := a.cluster.ShareListings(a.broker.Clients, a.store.Sessions); err != nil {
		return nil, nil, err
	}
	return clusterBroker{a.broker, a.cluster}, clusterSessions{a.store, a.cluster}, nil
}
