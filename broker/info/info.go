package info

import "time"

// Client is one connected MQTT client (GET /api/v1/clients).
type Client struct {
	ID              string     `json:"id"`
	Username        string     `json:"username"`
	Transport       string     `json:"transport"`
	Remote          string     `json:"remote"`
	ProtocolVersion int        `json:"protocol_version"`
	ConnectedSince  *time.Time `json:"connected_since"`
	// Node is the cluster node the client is connected to; omitted
	// alone.
	Node string `json:"node,omitempty"`
}

// Session is one persistent MQTT session, online or not, with its queue
// (GET /api/v1/sessions). Owner is the session's username.
type Session struct {
	ClientID  string     `json:"client_id"`
	Owner     string     `json:"owner"`
	Online    bool       `json:"online"`
	Queued    int        `json:"queued"`
	Dropped   int64      `json:"dropped"`
	ExpiresAt *time.Time `json:"expires_at"`
	// Node is the cluster node that holds the session; omitted alone.
	Node string `json:"node,omitempty"`
}

// Figures are the engine's statistics (its $SYS figures) and each
// listener's (GET /api/v1/broker).
type Figures struct {
	Version             string
	Started             time.Time
	BytesReceived       int64
	BytesSent           int64
	ClientsConnected    int64
	ClientsDisconnected int64
	ClientsMaximum      int64
	ClientsTotal        int64
	MessagesReceived    int64
	MessagesSent        int64
	MessagesDropped     int64
	Retained            int64
	Inflight            int64
	InflightDropped     int64
	Subscriptions       int64
	PacketsReceived     int64
	PacketsSent         int64
	Listeners           []Listener
}

// Listener is one listener's figures.
type Listener struct {
	Transport string `json:"transport"`
	Address   string `json:"address"`
	Open      int64  `json:"open"`
	Accepted  int64  `json:"accepted"`
	Refused   int64  `json:"refused"`
	BytesIn   int64  `json:"bytes_in"`
	BytesOut  int64  `json:"bytes_out"`
}

// Node is one node of a cluster (GET /api/v1/broker, "nodes").
type Node struct {
	Name              string    `json:"name"`
	Self              bool      `json:"self"`
	Clients           int64     `json:"clients"`
	MessagesPerSecond float64   `json:"messages_per_second"`
	LastSeen          time.Time `json:"last_seen"`
}
