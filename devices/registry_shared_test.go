package devices

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// twoNodes opens two registries on one new PostgreSQL database, as two
// nodes of a cluster would.
func twoNodes(t *testing.T) (a, b *Registry) {
	t.Helper()
	if testPG == nil {
		t.Skip("PostgreSQL pass only")
	}
	url := testPG.NewDatabase(t)
	regs := make([]*Registry, 2)
	for i := range regs {
		db, err := database.OpenPostgres(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		r, err := OpenRegistry(context.Background(), db, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		r.hashCost = bcrypt.MinCost
		t.Cleanup(func() { r.Close() })
		regs[i] = r
	}
	return regs[0], regs[1]
}

// revocations records a registry's OnRevoke and OnDeviceChange calls.
type revocations struct {
	mu      sync.Mutex
	revoked []Revocation
	changed []string
}

func watch(r *Registry) *revocations {
	w := &revocations{}
	r.OnRevoke(func(rv Revocation) { w.mu.Lock(); w.revoked = append(w.revoked, rv); w.mu.Unlock() })
	r.OnDeviceChange(func(id string) { w.mu.Lock(); w.changed = append(w.changed, id); w.mu.Unlock() })
	return w
}

func (w *revocations) has(rv Revocation) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, got := range w.revoked {
		if got == rv {
			return nil
		}
	}
	return fmt.Errorf("no revocation %+v in %+v", rv, w.revoked)
}

// TestRegistryNodesShareChanges: on PostgreSQL what one node changes
// counts on the other: a new device and user log in there, a revoked
// token and a logged-out session stop working there, and a disabled
// device, a changed role or changed grants reach the other node's
// callbacks (which close and re-check its connections).
func TestRegistryNodesShareChanges(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	wb := watch(b)

	_, secret, err := a.CreateDevice(ctx, NewDevice{ID: "shared-1"})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := b.Authenticate(ctx, "shared-1", secret); err != nil || id.Kind != KindDevice {
		t.Fatalf("device created on a, on b: %+v %v", id, err)
	}
	if _, err := a.CreateUser(ctx, "op", "op-password-1", RoleOperator); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Authenticate(ctx, "op", "op-password-1"); err != nil {
		t.Fatalf("user created on a, on b: %v", err)
	}
	// A name taken on one node is taken on the other.
	if _, _, err := b.CreateDevice(ctx, NewDevice{ID: "op"}); !errors.Is(err, ErrConflict) {
		t.Errorf("device named like a's user, on b: %v", err)
	}
	if _, _, err := a.CreateDevice(ctx, NewDevice{ID: "shared-2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateUser(ctx, "shared-2", "op-password-1", RoleViewer); !errors.Is(err, ErrConflict) {
		t.Errorf("user named like a's device, on b: %v", err)
	}
	tok, tk, err := a.CreateToken(ctx, "op", "ci", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AuthenticateToken(ctx, tok); err != nil {
		t.Fatalf("token created on a, on b: %v", err)
	}
	sess, _, err := a.IssueSession(ctx, User{Username: "op", Role: RoleOperator}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.VerifySession(sess); err != nil {
		t.Fatalf("session issued on a, on b: %v", err)
	}

	off := false
	if _, err := a.UpdateDevice(ctx, "shared-1", DevicePatch{Enabled: &off}); err != nil {
		t.Fatal(err)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error { return wb.has(Revocation{Name: "shared-1", Purge: true}) })
	if _, ok := b.Lookup("shared-1"); ok {
		t.Error("a device disabled on a is still enabled in b's cache")
	}
	typ := "meter"
	if _, err := a.UpdateDevice(ctx, "shared-1", DevicePatch{Type: &typ}); err != nil {
		t.Fatal(err)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		wb.mu.Lock()
		defer wb.mu.Unlock()
		if len(wb.changed) == 0 {
			return errors.New("no device change on b")
		}
		return nil
	})
	if got, _, _ := b.DeviceAccess("shared-1"); got != "meter" {
		t.Errorf("b's cache has type %q", got)
	}

	if err := a.RevokeToken(ctx, tk.ID); err != nil {
		t.Fatal(err)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error { return wb.has(Revocation{Name: "op", TokenID: tk.ID}) })
	if _, err := b.AuthenticateToken(ctx, tok); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("token revoked on a, on b: %v", err)
	}
	if err := a.RevokeSession(ctx, sess); err != nil {
		t.Fatal(err)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error { return wb.has(Revocation{Name: "op", SessionID: sessionID(t, a, sess)}) })
	if _, err := b.VerifySession(sess); err == nil {
		t.Error("session logged out on a still verifies on b")
	}
	role := RoleViewer
	if _, err := a.UpdateUser(ctx, "op", UserUpdate{Role: &role}); err != nil {
		t.Fatal(err)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error { return wb.has(Revocation{Name: "op"}) })
	if id, _ := b.Lookup("op"); id.Role != RoleViewer {
		t.Errorf("b's cache has role %q", id.Role)
	}
	// b's own changes do not come back to it twice.
	wa := watch(a)
	if err := b.DeleteDevice(ctx, "shared-1"); err != nil {
		t.Fatal(err)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error { return wa.has(Revocation{Name: "shared-1", Purge: true}) })
	wb.mu.Lock()
	n := 0
	for _, rv := range wb.revoked {
		if rv == (Revocation{Name: "shared-1", Purge: true}) {
			n++
		}
	}
	wb.mu.Unlock()
	if n != 2 { // the disable from a, the delete on b itself
		t.Errorf("b saw %d purges of shared-1, want 2", n)
	}
}

// sessionID is the id (jti) of a session token.
func sessionID(t *testing.T, r *Registry, token string) string {
	t.Helper()
	c, err := r.parseSession(token)
	if err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// TestEnsureAdminTwoNodesAtOnce: two nodes' first start on one empty
// database: both start, one of them creates admin.
func TestEnsureAdminTwoNodesAtOnce(t *testing.T) {
	a, b := twoNodes(t)
	var wg sync.WaitGroup
	gen := make([]string, 2)
	created := make([]bool, 2)
	errs := make([]error, 2)
	for i, r := range []*Registry{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gen[i], created[i], errs[i] = r.EnsureAdmin(context.Background(), "")
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("EnsureAdmin: %v, %v", errs[0], errs[1])
	}
	if (gen[0] == "") == (gen[1] == "") {
		t.Fatalf("generated passwords %q and %q: want exactly one", gen[0], gen[1])
	}
	if created[0] == created[1] || created[0] != (gen[0] != "") {
		t.Fatalf("created %v, generated %q and %q: want the one that generated", created, gen[0], gen[1])
	}
	pw := gen[0] + gen[1]
	for _, r := range []*Registry{a, b} {
		if _, err := r.Authenticate(context.Background(), AdminUser, pw); err != nil {
			t.Errorf("admin's password: %v", err)
		}
	}
}

// BenchmarkAuthenticateDevice: one device login (SQLite: the cache; then,
// in TestMain's PostgreSQL pass, with the identity read from the
// database).
//
//	go test -run XXX -bench AuthenticateDevice ./devices/
func BenchmarkAuthenticateDevice(b *testing.B) {
	ctx := context.Background()
	r, _ := openTestRegistry(b)
	_, secret, err := r.CreateDevice(ctx, NewDevice{ID: "bench-1"})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := r.Authenticate(ctx, "bench-1", secret); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPresenceTwoNodes: on PostgreSQL a device that moved from node a to
// node b stays online however late a's disconnect is written; a node that
// starts again marks only its own devices offline.
func TestPresenceTwoNodes(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	if err := a.SetNode(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := b.SetNode(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"mover", "stays-on-a"} {
		if _, _, err := a.CreateDevice(ctx, NewDevice{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	online := func(r *Registry, id string) func() error {
		return func() error {
			if d, err := r.Device(ctx, id); err != nil || !d.Online {
				return fmt.Errorf("%s online=%v %v", id, d.Online, err)
			}
			return nil
		}
	}
	now := time.Now()
	a.RecordPresence(Presence{DeviceID: "mover", Online: true, At: now})
	a.RecordPresence(Presence{DeviceID: "stays-on-a", Online: true, At: now})
	testmqtt.CheckFor(t, 10*time.Second, online(a, "mover"))
	testmqtt.CheckFor(t, 10*time.Second, online(a, "stays-on-a"))
	b.RecordPresence(Presence{DeviceID: "mover", Online: true, At: now.Add(time.Second)})
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		var node string
		if err := b.db.R.QueryRowContext(ctx, `SELECT node FROM devices WHERE id = 'mover'`).Scan(&node); err != nil || node != "b" {
			return fmt.Errorf("node %q %v", node, err)
		}
		return nil
	})
	a.RecordPresence(Presence{DeviceID: "mover", Online: false, At: now.Add(2 * time.Second)}) // late
	a.RecordPresence(Presence{DeviceID: "stays-on-a", Online: true, At: now.Add(2 * time.Second)})
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if written, _ := a.PresenceStats(); written < 4 {
			return fmt.Errorf("a wrote %d presence records", written)
		}
		return nil
	})
	if err := online(b, "mover")(); err != nil {
		t.Errorf("a's late disconnect: %v", err)
	}
	// a starts again: its device goes offline, b's stays online.
	if err := a.SetNode(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if d, _ := b.Device(ctx, "stays-on-a"); d.Online {
		t.Error("a restarted, its device is still online")
	}
	if err := online(b, "mover")(); err != nil {
		t.Errorf("a restarted: %v", err)
	}
}

// TestRegistryCatchesUpAfterLostNotifications: the server drops the
// nodes' notification connections, and a device is deleted and a user's
// role changed before they are back: the other node still closes the
// device's and the user's connections (the reload on reconnecting finds
// what changed) and its caches hold the new state.
func TestRegistryCatchesUpAfterLostNotifications(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	wb := watch(b)
	if _, _, err := a.CreateDevice(ctx, NewDevice{ID: "gone"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateUser(ctx, "op", "op-password-1", RoleOperator); err != nil {
		t.Fatal(err)
	}
	b.refreshName(ctx, "gone")
	b.refreshName(ctx, "op")
	if _, err := a.db.W.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteDevice(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	role := RoleViewer
	if _, err := a.UpdateUser(ctx, "op", UserUpdate{Role: &role}); err != nil {
		t.Fatal(err)
	}
	testmqtt.CheckFor(t, 15*time.Second, func() error {
		return errors.Join(wb.has(Revocation{Name: "gone", Purge: true}), wb.has(Revocation{Name: "op"}))
	})
	testmqtt.CheckFor(t, 15*time.Second, func() error {
		if _, ok := b.Lookup("gone"); ok {
			return errors.New("b still knows the deleted device")
		}
		if id, _ := b.Lookup("op"); id.Role != RoleViewer {
			return fmt.Errorf("b has role %q", id.Role)
		}
		return nil
	})
}
