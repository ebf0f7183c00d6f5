package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestClusterListings: GET /sessions and GET /clients on any node list
// the cluster's, each item naming its node, with the fields of one node
// unchanged; pages go through every node's items; a caller without a
// token is refused; a node alone names no node.
func TestClusterListings(t *testing.T) {
	apps := startCluster(t, 3, nil)
	off := mustMQ(t, apps[0].mqttAddr(), mqOpts{id: "ps-one", expiry: 3600})
	mustMQ(t, apps[1].mqttAddr(), mqOpts{id: "ps-two", expiry: 3600})
	mustMQ(t, apps[2].mqttAddr(), mqOpts{id: "live-three"})
	off.close()
	viewer := &apiClient{t: t, base: "http://" + apps[2].httpAddr(), token: viewerToken(t, apps[2])}

	type session struct {
		ClientID  string  `json:"client_id"`
		Owner     *string `json:"owner"`
		Online    bool    `json:"online"`
		Queued    *int    `json:"queued"`
		Dropped   *int64  `json:"dropped"`
		ExpiresAt *string `json:"expires_at"`
		Node      string  `json:"node"`
	}
	var sessions []session
	checkFor(t, 10*time.Second, func() error {
		var out struct{ Sessions []session }
		viewer.do("GET", "/sessions", nil, &out)
		sessions = out.Sessions
		got := map[string]string{}
		for _, s := range sessions {
			got[s.ClientID] = fmt.Sprintf("%s online=%v", s.Node, s.Online)
			if s.Owner == nil || s.Queued == nil || s.Dropped == nil {
				return fmt.Errorf("a session without its fields: %+v", s)
			}
		}
		if got["ps-one"] != "node1 online=false" || got["ps-two"] != "node2 online=true" || len(got) != 2 {
			return fmt.Errorf("GET /sessions on node3: %v", got)
		}
		return nil
	})
	for _, s := range sessions {
		if s.ClientID == "ps-one" && s.ExpiresAt == nil {
			t.Fatalf("offline session without expires_at: %+v", s)
		}
	}

	type client struct{ ID, Node string }
	var out struct{ Clients []client }
	viewer.do("GET", "/clients", nil, &out)
	var ids []string
	for _, c := range out.Clients {
		ids = append(ids, c.ID+"@"+c.Node)
	}
	if strings.Join(ids, ",") != "live-three@node3,ps-two@node2" {
		t.Fatalf("GET /clients on node3: %v", ids)
	}
	// One item a page: the cursor goes through the other nodes' items.
	var paged []string
	for cursor := ""; ; {
		var page struct {
			Clients    []client
			NextCursor string `json:"next_cursor"`
		}
		viewer.do("GET", "/clients?limit=1&cursor="+url.QueryEscape(cursor), nil, &page)
		for _, c := range page.Clients {
			paged = append(paged, c.ID+"@"+c.Node)
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	sort.Strings(paged)
	if strings.Join(paged, ",") != strings.Join(ids, ",") {
		t.Fatalf("paged: %v, all: %v", paged, ids)
	}
	for _, path := range []string{"/sessions", "/clients"} {
		if st := (&apiClient{t: t, base: viewer.base}).status("GET", path, nil); st != http.StatusUnauthorized {
			t.Fatalf("GET %s without credentials: %d", path, st)
		}
	}

	// Alone: no node field.
	solo := startTestApp(t, testConfig(t))
	mustMQ(t, solo.mqttAddr(), mqOpts{id: "ps-solo", expiry: 3600})
	soloViewer := &apiClient{t: t, base: "http://" + solo.httpAddr(), token: viewerToken(t, solo)}
	for _, path := range []string{"/sessions", "/clients"} {
		var raw map[string]json.RawMessage
		soloViewer.do("GET", path, nil, &raw)
		var items []map[string]json.RawMessage
		if err := json.Unmarshal(raw[strings.TrimPrefix(path, "/")], &items); err != nil || len(items) != 1 {
			t.Fatalf("GET %s alone: %v", path, raw)
		}
		if _, ok := items[0]["node"]; ok {
			t.Fatalf("GET %s alone names a node: %v", path, raw)
		}
	}
}

// TestClusterDeleteSession: DELETE /sessions/{clientId} through one node
// ends the session on the node that holds it: an offline one is purged
// there, a live one disconnected there; an id no node holds is 404.
func TestClusterDeleteSession(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
	apps := startCluster(t, 2, nil)
	off := mustMQ(t, apps[1].mqttAddr(), mqOpts{id: "far-off", expiry: 3600})
	off.sub(t, "far/#")
	off.close()
	live := mustMQ(t, apps[1].mqttAddr(), mqOpts{id: "far-live", expiry: 3600})
	admin := login(t, apps[0], "admin", simAdminPassword)
	checkFor(t, 10*time.Second, func() error {
		if se := sessionsListed(t, admin); len(se) != 2 || se["far-off"].Online || !se["far-live"].Online {
			return fmt.Errorf("GET /sessions on node1: %+v", se)
		}
		return nil
	})

	for _, id := range []string{"far-off", "far-live"} {
		if code, ecode, msg := deleteSession(t, admin, id, false); code != http.StatusNoContent {
			t.Fatalf("DELETE %s through node1: %d %s %q", id, code, ecode, msg)
		}
		if _, ok := apps[1].broker.Server.Clients.Get(id); ok {
			t.Fatalf("%s is still in node2's engine", id)
		}
	}
	select {
	case <-live.c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the live client on node2 is still connected")
	}
	if se := sessionsListed(t, admin); len(se) != 0 {
		t.Fatalf("GET /sessions on node1 after the deletes: %+v", se)
	}
	if code, _, _ := deleteSession(t, admin, "far-off", false); code != http.StatusNotFound {
		t.Fatalf("DELETE again: %d, want 404", code)
	}
	if code, _, _ := deleteSession(t, admin, "nowhere", false); code != http.StatusNotFound {
		t.Fatalf("DELETE an id no node holds: %d, want 404", code)
	}
}
