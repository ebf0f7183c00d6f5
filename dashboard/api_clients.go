package dashboard

import (
	"encoding/base64"
	"net/http"
	"sort"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/broker"
)

// client is one connected MQTT client as GET /clients shows it.
type client struct {
	ID              string     `json:"id"`
	Username        string     `json:"username"`
	Transport       string     `json:"transport"`
	Remote          string     `json:"remote"`
	ProtocolVersion int        `json:"protocol_version"`
	ConnectedSince  *time.Time `json:"connected_since"`
}

// clientList is the body of GET /clients.
type clientList struct {
	Clients    []client `json:"clients"`
	NextCursor string   `json:"next_cursor"`
}

// listClients: GET /clients?limit=&cursor= lists the connected MQTT
// clients (not the broker's own inline client) ordered by client id.
func (a *API) listClients(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r, "limit", "cursor")
	if err != nil {
		return err
	}
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	after, err := idCursor(q.Get("cursor"))
	if err != nil {
		return err
	}
	if a.broker == nil {
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "no broker is running"}
	}
	all := a.broker.Server.Clients.GetAll()
	ids := make([]string, 0, len(all))
	for id, cl := range all {
		if cl.Net.Inline || cl.Closed() || id <= after && after != "" {
			continue
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := clientList{Clients: []client{}}
	for i, id := range ids {
		if i == limit {
			out.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(out.Clients[limit-1].ID))
			break
		}
		out.Clients = append(out.Clients, a.describeClient(all[id]))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// idCursor decodes a cursor that holds the last id of the previous page.
func idCursor(c string) (string, error) {
	if c == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) == 0 {
		return "", badRequest(codeInvalid, "malformed cursor")
	}
	return string(b), nil
}

func (a *API) describeClient(cl *mqtt.Client) client {
	c := client{
		ID:              cl.ID,
		Username:        string(cl.Properties.Username),
		Transport:       broker.Transport(cl),
		Remote:          cl.Net.Remote,
		ProtocolVersion: int(cl.Properties.ProtocolVersion),
	}
	if a.clients != nil {
		if t, ok := a.clients.Since(cl); ok {
			t = t.UTC()
			c.ConnectedSince = &t
		}
	}
	return c
}

// ClientClock is an MQTT hook that remembers when each connected client's
// session was established, for GET /clients' "connected_since" (the
// engine does not keep it). Add it to the broker's hooks
// (broker.Options.Hooks) and pass it as APIOptions.Clients.
//
// It keys on the *mqtt.Client, so a session taken over by a reconnect
// with the same client id gets the new connection's time.
type ClientClock struct {
	mqtt.HookBase
	now func() time.Time

	// mu guards since and adds.
	mu    sync.Mutex
	since map[*mqtt.Client]time.Time
	adds  int
}

// NewClientClock returns an empty clock.
func NewClientClock() *ClientClock {
	return &ClientClock{now: time.Now, since: map[*mqtt.Client]time.Time{}}
}

// ID implements mqtt.Hook.
func (c *ClientClock) ID() string { return "tether-client-clock" }

// Provides implements mqtt.Hook.
func (c *ClientClock) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish || b == mqtt.OnDisconnect
}

// OnSessionEstablish records the time cl connected. It runs before the
// engine sends the CONNACK, so a client that has its CONNACK is listed
// with its time (OnSessionEstablished came after the CONNACK, and a fast
// client could be listed without one). A client whose CONNACK cannot be
// written never reaches OnDisconnect: every 1,024 connects, entries of
// closed clients are swept.
func (c *ClientClock) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	t := c.now()
	c.mu.Lock()
	c.since[cl] = t
	if c.adds++; c.adds%1024 == 0 {
		for k := range c.since {
			if k.Closed() {
				delete(c.since, k)
			}
		}
	}
	c.mu.Unlock()
}

// OnDisconnect forgets cl.
func (c *ClientClock) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	c.mu.Lock()
	delete(c.since, cl)
	c.mu.Unlock()
}

// Since returns when cl connected, if the clock saw it.
func (c *ClientClock) Since(cl *mqtt.Client) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.since[cl]
	return t, ok
}
