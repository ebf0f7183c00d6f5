package simulator

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// bulkAPI mimics POST /api/v1/devices/bulk: it checks the token and the
// body and issues a secret per device.
type bulkAPI struct {
	mu       sync.Mutex // mu guards the fields below
	secrets  map[string]string
	requests int
	fail     bool
}

func (a *bulkAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	writeErr := func(status int, code, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":{"code":%q,"message":%q}}`, code, msg)
	}
	if r.Method != http.MethodPost || r.URL.Path != "/api/v1/devices/bulk" {
		writeErr(http.StatusNotFound, "not_found", "no such route")
		return
	}
	if r.Header.Get("Authorization") != "Bearer tok" {
		writeErr(http.StatusUnauthorized, "unauthorized", "bad token")
		return
	}
	var body struct {
		Devices []DeviceSpec `json:"devices"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Devices) == 0 {
		writeErr(http.StatusBadRequest, "bad_request", "want devices")
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requests++
	if a.fail {
		writeErr(http.StatusConflict, "conflict", "device exists")
		return
	}
	resp := struct {
		Devices []map[string]any `json:"devices"`
	}{}
	for _, d := range body.Devices {
		if d.Type == "" || d.Labels["profile"] == "" {
			writeErr(http.StatusBadRequest, "bad_request", "type and labels expected")
			return
		}
		secret := "secret-" + d.ID
		a.secrets[d.ID] = secret
		resp.Devices = append(resp.Devices, map[string]any{"id": d.ID, "name": d.Name, "type": d.Type, "labels": d.Labels, "secret": secret})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(resp)
}

// secretHook admits only clients whose username and password the API
// issued, with client id = username.
type secretHook struct {
	mochi.HookBase
	api *bulkAPI
}

func (h *secretHook) ID() string { return "secrets" }

func (h *secretHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *secretHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	h.api.mu.Lock()
	defer h.api.mu.Unlock()
	user := string(pk.Connect.Username)
	return user == cl.ID && h.api.secrets[user] != "" && h.api.secrets[user] == string(pk.Connect.Password)
}

func (h *secretHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }

func TestSimProvisionsThroughAPI(t *testing.T) {
	api := &bulkAPI{secrets: map[string]string{}}
	srv := httptest.NewServer(api)
	defer srv.Close()
	b := startBroker(t, &secretHook{api: api}) // only the API's secrets open it

	var credsOut strings.Builder
	ep, _ := ParseEndpoint(b.tcp, "", "")
	stop := startSim(t, SimConfig{
		Endpoint: ep, Devices: 5, Prefix: "p-", Interval: 50 * time.Millisecond,
		Provisioner: &Provisioner{Server: srv.URL, Token: "tok", BatchSize: 2},
		CredsOut:    &credsOut,
	})
	waitFor(t, 10*time.Second, "provisioned devices to connect", func() bool {
		for i := 1; i <= 5; i++ {
			cl, ok := b.Clients.Get(fmt.Sprintf("p-%05d", i))
			if !ok || cl.Closed() {
				return false
			}
		}
		return true
	})
	sum := stop()
	if sum.ConnectFailures != 0 || sum.Connects != 5 {
		t.Fatalf("summary: %+v", sum)
	}
	if api.requests != 3 {
		t.Fatalf("%d bulk requests, want 3 batches", api.requests)
	}
	creds, err := ReadCredentials(strings.NewReader(credsOut.String()))
	if err != nil || len(creds) != 5 || creds[4].Secret != "secret-p-00005" {
		t.Fatalf("written credentials: %v, %v", creds, err)
	}

	// A wrong secret is refused, and counted.
	sum, err = RunSim(context.Background(), SimConfig{
		Endpoint: ep, Credentials: []Credential{{ID: "p-00001", Secret: "wrong"}}, Duration: 300 * time.Millisecond,
	}, nil)
	if err != nil || sum.Connects != 0 || sum.ConnectFailures == 0 {
		t.Fatalf("wrong secret: %+v, %v", sum, err)
	}
}

func TestProvisionErrors(t *testing.T) {
	api := &bulkAPI{secrets: map[string]string{}, fail: true}
	srv := httptest.NewServer(api)
	defer srv.Close()
	specs := []DeviceSpec{{ID: "a", Type: "t", Labels: map[string]string{"profile": "x"}}}

	_, err := (&Provisioner{Server: srv.URL, Token: "tok"}).Provision(context.Background(), specs)
	if err == nil || !strings.Contains(err.Error(), "409 Conflict: conflict: device exists") {
		t.Fatalf("API error: %v", err)
	}
	_, err = (&Provisioner{Server: srv.URL, Token: "wrong"}).Provision(context.Background(), specs)
	if err == nil || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("bad token error (must not echo the token): %v", err)
	}
	if _, err := decodeBulkResponse(specs, []byte(`{"devices":[{"id":"b","secret":"x"}]}`)); err == nil {
		t.Fatal("response without the device's secret: no error")
	}
	if _, err := decodeBulkResponse(specs, []byte(`<html>`)); err == nil {
		t.Fatal("non-JSON response: no error")
	}
}
