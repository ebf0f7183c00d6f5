package dashboard

import (
	"net/http"
	"time"

	"github.com/tether-iot/tether/listeners"
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
	Listeners           []listenerStats `json:"listeners"`
	// The persistent sessions' queues on disk, and their bound
	// (mqtt.max_queue_store_bytes).
	QueueStoreBytes      int64 `json:"queue_store_bytes"`
	QueueStoreLimitBytes int64 `json:"queue_store_limit_bytes"`
}

// listenerStats is one listener's figures.
type listenerStats struct {
	Transport string `json:"transport"`
	Address   string `json:"address"`
	Open      int64  `json:"open"`
	Accepted  int64  `json:"accepted"`
	Refused   int64  `json:"refused"`
	BytesIn   int64  `json:"bytes_in"`
	BytesOut  int64  `json:"bytes_out"`
}

// brokerStats: GET /broker.
func (a *API) brokerStats(w http.ResponseWriter, r *http.Request) error {
	if _, err := query(r); err != nil {
		return err
	}
	if a.broker == nil {
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "no broker is running"}
	}
	i := a.broker.Server.Info.Clone() // atomic loads
	started := i.Started
	s := brokerInfo{
		Version:             i.Version,
		Started:             time.Unix(started, 0).UTC(),
		Uptime:              max(0, a.now().Unix()-started),
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
		Listeners:           []listenerStats{},
	}
	if a.store != nil {
		s.QueueStoreBytes, s.QueueStoreLimitBytes = a.store.QueueStoreUse()
	}
	b := a.broker
	if b.TCP != nil {
		s.Listeners = append(s.Listeners, statsOf(b.TCP.ID(), b.TCP.Address(), b.TCP.Stats()))
	}
	if b.TLS != nil {
		s.Listeners = append(s.Listeners, statsOf(b.TLS.ID(), b.TLS.Address(), b.TLS.Stats()))
	}
	if b.WS != nil {
		s.Listeners = append(s.Listeners, statsOf(b.WS.ID(), b.WS.Address(), b.WS.Stats()))
	}
	if b.WSS != nil {
		s.Listeners = append(s.Listeners, statsOf(b.WSS.ID(), b.WSS.Address(), b.WSS.Stats()))
	}
	writeJSON(w, http.StatusOK, s)
	return nil
}

func statsOf(transport, addr string, st *listeners.Stats) listenerStats {
	return listenerStats{
		Transport: transport,
		Address:   addr,
		Open:      st.Open.Load(),
		Accepted:  st.Accepted.Load(),
		Refused:   st.Refused.Load(),
		BytesIn:   st.BytesIn.Load(),
		BytesOut:  st.BytesOut.Load(),
	}
}
