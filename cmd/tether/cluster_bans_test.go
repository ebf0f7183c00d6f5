package main

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tether-iot/tether/configs"
)

// The cluster's one login throttle and ban list (cluster.Node.ShareBans):
// three in-process nodes, each with its own SQLite registry, clients from
// several loopback addresses.

// waitRefusals waits until every app counts at least n recent refusals
// of the ban key.
func waitRefusals(t *testing.T, apps []*app, key string, n int) {
	t.Helper()
	checkFor(t, 10*time.Second, func() error {
		for _, a := range apps {
			got := 0
			for _, o := range a.bans.Offenders(1000) {
				if o.Key == key {
					got = o.Recent
				}
			}
			if got < n {
				return fmt.Errorf("%s counts %d refusals of %s, want %d", a.cluster.Name(), got, key, n)
			}
		}
		return nil
	})
}

// waitBanned waits until every app's bans hold addr banned (or not).
func waitBanned(t *testing.T, apps []*app, addr string, want bool) {
	t.Helper()
	checkFor(t, 20*time.Second, func() error {
		for _, a := range apps {
			if got := a.bans.AddressBanned(addr); got != want {
				return fmt.Errorf("%s: %s banned %v, want %v", a.cluster.Name(), addr, got, want)
			}
		}
		return nil
	})
}

type clusterSecurity struct {
	Bans     []struct{ Key, Node string }
	Refusals []struct{ Address, Node string }
}

// TestClusterBansShared: failed logins spread over three nodes ban the
// address on all of them; the node whose refusal reached the threshold
// decides and GET /security on any node names it; a node that joins
// later takes the ban up; a lesser identity can neither see nor lift it;
// an admin lifts it through one node and the address logs in on every
// node again.
func TestClusterBansShared(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", secAdminPassword)
	secure := func(_ int, cfg *configs.Config) {
		cfg.Auth.AllowAnonymous = false
		cfg.Security.BanThreshold = 6
		cfg.Security.BanExempt = nil
	}
	apps := startCluster(t, 3, secure)
	olga := func(a *app) {
		t.Helper()
		if _, err := a.registry.CreateUser(context.Background(), "olga", "olga-password-1", "operator"); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range apps {
		olga(a)
	}
	// Two wrong logins on each node, six names: each node alone saw two,
	// far below the threshold; the cluster saw six.
	for i := range 6 {
		a := apps[i%3]
		code, ok := connackFrom(t, "127.0.0.2", a.mqttAddr(), 5, fmt.Sprintf("guess-%d", i), fmt.Sprintf("guess-%d", i), "wrong-password")
		if !ok || code != 0x86 {
			t.Fatalf("wrong password %d on %s: CONNACK %#x %v", i, a.cluster.Name(), code, ok)
		}
		waitRefusals(t, apps, "ip:127.0.0.2", i+1)
	}
	banned := func(a *app) error {
		if code, ok := connackFrom(t, "127.0.0.2", a.mqttAddr(), 5, "olga-1", "olga", "olga-password-1"); ok {
			return fmt.Errorf("%s: a banned address got CONNACK %#x", a.cluster.Name(), code)
		}
		return nil
	}
	// Wait for the ban to reach every node before probing with a correct
	// login: one that raced the ban's arrival would be let in and then
	// disconnected.
	waitBanned(t, apps, "127.0.0.2", true)
	for _, a := range apps {
		if err := banned(a); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range apps {
		if code, ok := connackFrom(t, "127.0.0.1", a.mqttAddr(), 5, "olga-1", "olga", "olga-password-1"); !ok || code != 0 {
			t.Fatalf("%s: a correct login from another address: %#x %v", a.cluster.Name(), code, ok)
		}
		if st, code := loginFrom(t, a, "127.0.0.2", "", "admin", secAdminPassword); st != http.StatusForbidden || code != "banned" {
			t.Fatalf("%s: banned address, correct HTTP login: %d %s", a.cluster.Name(), st, code)
		}
	}

	admin := uiLogin(t, "http://"+apps[1].httpAddr(), "admin", secAdminPassword)
	var s clusterSecurity
	admin.do("GET", "/security", nil, &s)
	if len(s.Bans) != 1 || s.Bans[0].Key != "ip:127.0.0.2" || s.Bans[0].Node != "node3" {
		t.Fatalf("GET /security on node2, bans: %+v", s.Bans)
	}
	nodes := map[string]bool{}
	for _, r := range s.Refusals {
		if r.Address == "127.0.0.2" {
			nodes[r.Node] = true
		}
	}
	if !nodes["node1"] || !nodes["node2"] || !nodes["node3"] {
		t.Fatalf("GET /security on node2: refusals not from every node: %+v", s.Refusals)
	}

	// A node that joins now takes the ban up.
	late := startTestApp(t, func() configs.Config {
		cfg := testConfig(t)
		cfg.Cluster.Node, cfg.Cluster.Listen, cfg.Cluster.Secret = "node4", "127.0.0.1:0", testClusterSecret
		cfg.Cluster.Peers = []string{apps[0].cluster.RouteAddr()}
		secure(3, &cfg)
		return cfg
	}())
	olga(late)
	waitBanned(t, []*app{late}, "127.0.0.2", true)
	if err := banned(late); err != nil {
		t.Fatal(err)
	}
	apps = append(apps, late)

	// A lesser identity may neither see nor lift it.
	if _, err := apps[1].registry.CreateUser(context.Background(), "vera", "vera-password", "operator"); err != nil {
		t.Fatal(err)
	}
	vera := uiLogin(t, "http://"+apps[1].httpAddr(), "vera", "vera-password")
	if st := vera.status("GET", "/security", nil); st != http.StatusForbidden {
		t.Fatalf("GET /security as an operator: %d", st)
	}
	if st := vera.status("DELETE", "/security/bans/ip:127.0.0.2", nil); st != http.StatusForbidden {
		t.Fatalf("DELETE /security/bans as an operator: %d", st)
	}
	for _, a := range apps {
		if err := banned(a); err != nil {
			t.Fatalf("after an operator tried to lift it: %v", err)
		}
	}

	// Lifted through node2: the address logs in on every node.
	admin.do("DELETE", "/security/bans/ip:127.0.0.2", nil, nil)
	waitBanned(t, apps, "127.0.0.2", false)
	for _, a := range apps {
		if code, ok := connackFrom(t, "127.0.0.2", a.mqttAddr(), 5, "olga-1", "olga", "olga-password-1"); !ok || code != 0 {
			t.Fatalf("%s after the lift: CONNACK %#x %v", a.cluster.Name(), code, ok)
		}
	}
}

// TestClusterLoginThrottleShared: failed logins of one name from one
// address on two nodes close that name and address on the third, which
// saw none of them (429); the same name from another address logs in
// there; a correct login on one node clears the pair on every node.
func TestClusterLoginThrottleShared(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", secAdminPassword)
	apps := startCluster(t, 3, func(_ int, cfg *configs.Config) {
		cfg.Auth.AllowAnonymous = false
		cfg.Security.BanExempt = nil
	})
	for _, a := range apps {
		if _, err := a.registry.CreateUser(context.Background(), "victor", "victor-password-1", "operator"); err != nil {
			t.Fatal(err)
		}
	}
	const key = "id:victor@127.0.0.3"
	// Fail on node1 and node2 in turn until the third node keeps the
	// pair closed for at least 4 s (each failure past the fifth doubles
	// the while); a node whose pair is closed (429) is waited for.
	for i := 0; apps[2].logins.Wait("victor", "127.0.0.3") < 4*time.Second; i++ {
		if i > 12 {
			t.Fatalf("node3 never closed the pair: wait %v", apps[2].logins.Wait("victor", "127.0.0.3"))
		}
		a := apps[i%2]
		checkFor(t, 20*time.Second, func() error {
			if w := a.logins.Wait("victor", "127.0.0.3"); w > 0 {
				return fmt.Errorf("%s keeps the pair closed for %v", a.cluster.Name(), w)
			}
			return nil
		})
		if st, _ := loginFrom(t, a, "127.0.0.3", "", "victor", "wrong-password"); st != http.StatusUnauthorized {
			t.Fatalf("wrong password %d on %s: %d", i, a.cluster.Name(), st)
		}
		waitRefusals(t, apps, key, i+1)
	}
	if st, code := loginFrom(t, apps[2], "127.0.0.3", "", "victor", "victor-password-1"); st != http.StatusTooManyRequests {
		t.Fatalf("node3, correct password from the guessing address: %d %s", st, code)
	}
	if st, _ := loginFrom(t, apps[2], "127.0.0.1", "", "victor", "victor-password-1"); st != http.StatusOK {
		t.Fatalf("node3, correct password from another address: %d", st)
	}

	// Once the pair reopens, a correct login on node1 clears the name's
	// failures at that address on every node: node3 then counts a new
	// wrong password as the first, and keeps the pair open.
	checkFor(t, 60*time.Second, func() error {
		if w := apps[0].logins.Wait("victor", "127.0.0.3"); w > 0 {
			return fmt.Errorf("node1 keeps the pair closed for %v", w)
		}
		return nil
	})
	if st, _ := loginFrom(t, apps[0], "127.0.0.3", "", "victor", "victor-password-1"); st != http.StatusOK {
		t.Fatalf("node1, correct password once reopened: %d", st)
	}
	checkFor(t, 10*time.Second, func() error {
		for _, a := range apps {
			if n := a.logins.Size(); n != 1 { // the address's key alone
				return fmt.Errorf("%s holds %d limiter keys, want 1 (the pair cleared)", a.cluster.Name(), n)
			}
		}
		return nil
	})
	if st, _ := loginFrom(t, apps[2], "127.0.0.3", "", "victor", "wrong-password"); st != http.StatusUnauthorized {
		t.Fatalf("node3, wrong password after the clear: %d", st)
	}
	if w := apps[2].logins.Wait("victor", "127.0.0.3"); w > 0 {
		t.Fatalf("node3 closed the pair after one failure following a correct login elsewhere: %v", w)
	}
}

// TestClusterUISecurity: the dashboard's Security page on node1 shows a
// ban node2 decided from refusals node2 saw, each naming node2, and its
// Lift button lifts the ban on both nodes.
func TestClusterUISecurity(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", uiAdminPassword)
	apps := startCluster(t, 2, func(_ int, cfg *configs.Config) {
		cfg.Auth.AllowAnonymous = false
		cfg.Security.BanThreshold = 3
		cfg.Security.BanExempt = nil
	})
	ctx := uiBrowser(t)
	for i := range 3 {
		if _, ok := connackFrom(t, "127.0.0.2", apps[1].mqttAddr(), 5, fmt.Sprintf("g-%d", i), fmt.Sprintf("guess-%d", i), "wrong-password"); !ok {
			t.Fatal("refused before the ban")
		}
	}
	waitBanned(t, apps, "127.0.0.2", true)
	base := "http://" + apps[0].httpAddr()
	step(t, ctx, "log in as admin on node1", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "security page", chromedp.Navigate(base+"/#/security"),
		chromedp.WaitVisible(chromedp.CSS("#ban-table")),
		waitJS(`[...document.querySelectorAll('#ban-rows tr[data-key="ip:127.0.0.2"] td')].some((td) => td.textContent.endsWith(' on node2'))`),
		waitJS(`[...document.querySelectorAll('#refusal-rows td')].some((td) => td.textContent === '127.0.0.2 → node2')`))
	step(t, ctx, "lift the ban", chromedp.Click(chromedp.CSS(`#ban-rows tr[data-key="ip:127.0.0.2"] .lift`)),
		waitJS(`!document.querySelector('#ban-rows tr[data-key="ip:127.0.0.2"]')`))
	waitBanned(t, apps, "127.0.0.2", false)
}
