package main

import (
	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/broker/info"
	"github.com/tether-iot/tether/cluster"
	"github.com/tether-iot/tether/dashboard"
)

// In a cluster, GET /clients and GET /sessions (and a device's export)
// list every node's clients and sessions, each naming its node: the API
// is given these views of the broker and the session store, which ask
// the other nodes (cluster.Node.ShareListings), and DELETE
// /sessions/{clientId} ends the session on whichever nodes hold it
// (cluster.Node.ShareSessionDeletes). Alone, the API gets the broker and
// the store themselves.

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

// sessionDeleter ends sessions for DELETE /api/v1/sessions/{clientId}:
// this node's through the access hook's purge (broker.Auth.DeleteSession,
// the one every purge goes through), and in a cluster every other
// node's too, asked over the bus at the same time.
type sessionDeleter struct {
	auth *broker.Auth
	n    *cluster.Node // nil alone
}

func (d sessionDeleter) DeleteSession(clientID string) (bool, error) {
	if d.n == nil {
		return d.auth.DeleteSession(clientID), nil
	}
	type answer struct{ found, complete bool }
	elsewhere := make(chan answer, 1)
	go func() {
		found, complete := d.n.DeleteSession(clientID)
		elsewhere <- answer{found, complete}
	}()
	here := d.auth.DeleteSession(clientID)
	there := <-elsewhere
	switch {
	case here || there.found:
		return true, nil
	case !there.complete:
		return false, dashboard.ErrNotEveryNode
	}
	return false, nil
}

// apiViews are the broker and the session store as the API sees them,
// and what ends sessions; in a cluster, this node answers the others'
// listings and session deletions from then on.
func (a *app) apiViews() (dashboard.Broker, dashboard.Sessions, dashboard.SessionDeleter, error) {
	if a.cluster == nil {
		return a.broker, a.store, sessionDeleter{auth: a.auth}, nil
	}
	if err := a.cluster.ShareListings(a.broker.Clients, a.store.Sessions); err != nil {
		return nil, nil, nil, err
	}
	if err := a.cluster.ShareSessionDeletes(a.auth.DeleteSession); err != nil {
		return nil, nil, nil, err
	}
	return clusterBroker{a.broker, a.cluster}, clusterSessions{a.store, a.cluster}, sessionDeleter{a.auth, a.cluster}, nil
}
