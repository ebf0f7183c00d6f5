package dashboard

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/devices"
)

// authDeleter is the broker's access hook as the API's SessionDeleter
// (cmd/tether wires the same, with the cluster's nodes).
type authDeleter struct{ a *broker.Auth }

func (d authDeleter) DeleteSession(id string) (bool, error) { return d.a.DeleteSession(id), nil }

// withSessionBroker gives the API a real broker whose access hook (on
// the API's registry; anonymous clients allowed) ends sessions.
func withSessionBroker(t *testing.T, out **broker.Broker) func(*APIOptions) {
	return func(o *APIOptions) {
		auth := broker.NewAuth(broker.AuthOptions{Registry: o.Registry, AllowAnonymous: true, Logger: slog.New(slog.DiscardHandler)})
		b := startBrokerWith(t, auth)
		o.Broker, o.SessionDeleter = b, authDeleter{auth}
		*out = b
	}
}

// TestDeleteSessionRoute: DELETE /sessions/{clientId} is the admins'; bad
// client ids get 400 and an unknown one 404, all changing nothing; an
// admin's ends a live client's session (the client id percent-encoded),
// and the audit log records who did it to which client id.
func TestDeleteSessionRoute(t *testing.T) {
	var au *devices.Audit
	var b *broker.Broker
	e := newAPIEnv(t, withAudit(t, &au), withSessionBroker(t, &b))
	const id = "plant/3 Öl"
	lost := make(chan error, 1)
	o := paho.NewClientOptions().AddBroker("tcp://" + b.TCP.Address()).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	if tok := c.Subscribe("plant/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	path := "/sessions/" + url.PathEscape(id)
	tests := []struct {
		role, path string
		want       int
	}{
		{"", path, http.StatusUnauthorized},
		{"viewer", path, http.StatusForbidden},
		{"operator", path, http.StatusForbidden},
		{"admin", "/sessions/%FF%FE", http.StatusBadRequest},
		{"admin", "/sessions/a%00b", http.StatusBadRequest},
		{"admin", "/sessions/" + strings.Repeat("x", 65536), http.StatusBadRequest},
		{"admin", "/sessions/nobody", http.StatusNotFound},
		{"admin", "/sessions/plant", http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s %.40s", tc.role, tc.path), func(t *testing.T) {
			defer e.use(t)()
			res, body := e.do("DELETE", tc.path, e.tokens[tc.role], nil)
			e.mustStatus(res, body, tc.want)
			eb := checkErrorBody(t, res, body)
			switch {
			case tc.want == http.StatusBadRequest && (eb.Error.Code != codeInvalid || !strings.Contains(eb.Error.Message, "client id")),
				tc.want == http.StatusNotFound && eb.Error.Message != "session not found":
				t.Fatalf("error %+v", eb.Error)
			}
		})
	}
	if !c.IsConnectionOpen() {
		t.Fatal("refused requests disconnected the client")
	}
	for _, en := range e.auditEntries() {
		if en.Action == devices.AuditSessionDeleted {
			t.Fatalf("refused requests recorded %+v", en)
		}
	}

	res, body := e.do("DELETE", path, e.tokens["admin"], nil)
	e.mustStatus(res, body, http.StatusNoContent)
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the client is still connected")
	}
	if _, ok := b.Server.Clients.Get(id); ok {
		t.Fatal("the session is still in the engine")
	}
	if !hasEntry(e.auditEntries(), devices.AuditSessionDeleted, "admin", id) {
		t.Fatalf("no session_deleted entry by admin on %q: %+v", id, e.auditEntries())
	}
	res, body = e.do("DELETE", path, e.tokens["admin"], nil)
	e.mustStatus(res, body, http.StatusNotFound)
}

// notEveryNode is a cluster where no node answering holds the session
// and one node did not answer.
type notEveryNode struct{}

func (notEveryNode) DeleteSession(string) (bool, error) {
	return false, fmt.Errorf("cluster: %w", ErrNotEveryNode)
}

// Without a broker the route answers 503; in a cluster where a node that
// may hold the session did not answer, 503 with Retry-After, not 404.
func TestDeleteSessionUnavailable(t *testing.T) {
	e := newAPIEnv(t)
	res, body := e.do("DELETE", "/sessions/x", e.tokens["admin"], nil)
	e.mustStatus(res, body, http.StatusServiceUnavailable)

	e = newAPIEnv(t, func(o *APIOptions) { o.SessionDeleter = notEveryNode{} })
	res, body = e.do("DELETE", "/sessions/x", e.tokens["admin"], nil)
	e.mustStatus(res, body, http.StatusServiceUnavailable)
	if res.Header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}
	if eb := checkErrorBody(t, res, body); !strings.Contains(eb.Error.Message, "not every cluster node answered") {
		t.Fatalf("message %q", eb.Error.Message)
	}
}
