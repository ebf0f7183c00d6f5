package dashboard

import (
	"net/http"
	"time"

	"github.com/tether-iot/tether/broker/info"
)

// brokerInfo is the body of GET /broker: the engine's statistics (mochi's
// $SYS figures) and each listener's.
type brokerInfo struct {
	Version             string          `json:"version"`
	Started             time.Time       `json:"started"`
	Uptime              int64           `json:"uptime"`
	BytesReceived       int64           `json:"bytes_received"`
	BytesSent           int64           `json:"bytes_sent"`
	ClientsConnected    int64           `json:"clients_connected"`
	ClientsDisconnected int64           `json:"clients_disconnected"`
	ClientsMaximum      int64           `json:"clients_maximum"`
	ClientsTotal        int64           `json:"clients_total"`
	MessagesReceived    int64           `json:"messages_received"`
	MessagesSent        int64           `json:"messages_sent"`
	MessagesDropped     int64           `json:"messages_dropped"`
	Retained            int64           `json:"retained"`
	Inflight            int64           `json:"inflight"`
	InflightDropped     int64           `json:"inflight_dropped"`
	Subscriptions       int64           `json:"subscriptions"`
	PacketsReceived     int64           `json:"packets_received"`
	PacketsSent         int64           `json:"packets_sent"`
	Listeners           []info.Listener `json:"listeners"`
	// The persistent sessions' queues on disk, and their bound
	// (mqtt.max_queue_store_bytes).
	QueueStoreBytes      int64 `json:"queue_store_bytes"`
	QueueStoreLimitBytes int64 `json:"queue_store_limit_bytes"`
	// Nodes are the cluster's nodes, this one first; absent when the
	// node is alone.
	Nodes []info.Node `json:"nodes,omitempty"`
}

// brokerStats: GET /broker.
func (a *API) brokerStats(w http.ResponseWriter, r *http.Request) error {
	if _, err := query(r); err != nil {
		return err
	}
	if a.broker == nil {
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "no broker is running"}
	}
	i := a.broker.Figures()
	s := brokerInfo{
		Version:             i.Version,
		Started:             i.Started,
		Uptime:              max(0, a.now().Unix()-i.Started.Unix()),
		BytesReceived:       i.BytesReceived,
		BytesSent:           i.BytesSent,
		ClientsConnected:    i.ClientsConnected,
		ClientsDisconnected: i.ClientsDisconnected,
		ClientsMaximum:      i.ClientsMaximum,
		ClientsTotal:        i.ClientsTotal,
		MessagesReceived:    i.MessagesReceived,
		MessagesSent:        i.MessagesSent,
		MessagesDropped:     i.MessagesDropped,
		Retained:            i.Retained,
		Inflight:            i.Inflight,
		InflightDropped:     i.InflightDropped,
		Subscriptions:       i.Subscriptions,
		PacketsReceived:     i.PacketsReceived,
		PacketsSent:         i.PacketsSent,
		Listeners:           i.Listeners,
	}
	if a.store != nil {
		s.QueueStoreBytes, s.QueueStoreLimitBytes = a.store.QueueStoreUse()
	}
	if a.nodes != nil {
		s.Nodes = a.nodes()
	}
	return writeJSON(w, http.StatusOK, s)
}
