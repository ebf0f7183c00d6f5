package devices

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestSessionBoundToTheCheckedPassword: a login checks the password
// (AuthenticateUser), then issues the session (IssueSession). An
// administrator's change between the two — a new password, a new role,
// the user deleted and created again with the same password — must not
// give the login a session: IssueSession refuses it (ErrUnauthorized),
// where it used to sign a session valid under the new password. Without a
// change between them the session is issued and valid. On PostgreSQL the
// change is also made on another node, which this node hears of only from
// the database.
func TestSessionBoundToTheCheckedPassword(t *testing.T) {
	ctx := context.Background()
	r, _ := openTestRegistry(t)
	if _, err := r.CreateUser(ctx, "admin", "admin-password", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	newPassword, operator := "new-password", RoleOperator
	changes := []struct {
		name   string
		change func(t *testing.T, r *Registry)
	}{
		{"password", func(t *testing.T, r *Registry) {
			if _, err := r.UpdateUser(ctx, "carol", UserUpdate{Password: &newPassword}); err != nil {
				t.Fatal(err)
			}
		}},
		{"role", func(t *testing.T, r *Registry) {
			if _, err := r.UpdateUser(ctx, "carol", UserUpdate{Role: &operator}); err != nil {
				t.Fatal(err)
			}
		}},
		{"deleted and created again", func(t *testing.T, r *Registry) {
			if err := r.DeleteUser(ctx, "carol"); err != nil {
				t.Fatal(err)
			}
			if _, err := r.CreateUser(ctx, "carol", "old-password", RoleViewer); err != nil {
				t.Fatal(err)
			}
		}},
	}
	check := func(t *testing.T, issuer, changer *Registry, change func(*testing.T, *Registry)) {
		t.Helper()
		u, err := issuer.AuthenticateUser(ctx, "carol", "old-password")
		if err != nil {
			t.Fatal(err)
		}
		changer.Refresh(ctx, "carol") // PostgreSQL: the other node learns of carol
		change(t, changer)
		tok, _, err := issuer.IssueSession(ctx, u, time.Hour)
		if !errors.Is(err, ErrUnauthorized) {
			id, verr := issuer.VerifySession(tok)
			t.Fatalf("IssueSession after the change: %v, want ErrUnauthorized (the session verifies as %+v, %v)", err, id, verr)
		}
	}
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			if _, err := r.CreateUser(ctx, "carol", "old-password", RoleViewer); err != nil {
				t.Fatal(err)
			}
			defer r.DeleteUser(ctx, "carol")
			check(t, r, r, c.change)
		})
	}
	t.Run("no change", func(t *testing.T) {
		if _, err := r.CreateUser(ctx, "carol", "old-password", RoleViewer); err != nil {
			t.Fatal(err)
		}
		defer r.DeleteUser(ctx, "carol")
		u, err := r.AuthenticateUser(ctx, "carol", "old-password")
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := r.IssueSession(ctx, u, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if id, err := r.VerifySession(tok); err != nil || id.Name != "carol" || id.Role != RoleViewer {
			t.Fatalf("session: %+v %v", id, err)
		}
		// A change after the session was issued ends it, as before.
		if _, err := r.UpdateUser(ctx, "carol", UserUpdate{Password: &newPassword}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.VerifySession(tok); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("session after a new password: %v", err)
		}
	})
	if testPG == nil {
		return
	}
	t.Run("changed on another node", func(t *testing.T) {
		a, b := twoNodes(t)
		if _, err := a.CreateUser(ctx, "admin", "admin-password", RoleAdmin); err != nil {
			t.Fatal(err)
		}
		for _, c := range changes {
			t.Run(c.name, func(t *testing.T) {
				if _, err := a.CreateUser(ctx, "carol", "old-password", RoleViewer); err != nil {
					t.Fatal(err)
				}
				defer a.DeleteUser(ctx, "carol")
				check(t, a, b, c.change)
			})
		}
	})
}

// TestLastAdminSurvivesConcurrentDemotions: two admins demoted at once —
// on one node, and on PostgreSQL from two nodes, whose caches each still
// count the other admin — leave one admin: one change succeeds, the
// other is ErrLastAdmin. Deleting the two at once, the same.
func TestLastAdminSurvivesConcurrentDemotions(t *testing.T) {
	ctx := context.Background()
	viewer := RoleViewer
	run := func(t *testing.T, a, b *Registry) {
		for round := range 10 {
			for _, name := range []string{"admin1", "admin2"} {
				if _, err := a.CreateUser(ctx, name, "admin-password", RoleAdmin); err != nil {
					t.Fatal(err)
				}
			}
			b.Refresh(ctx, "admin1")
			b.Refresh(ctx, "admin2")
			var errs [2]error
			var wg sync.WaitGroup
			for i, r := range []*Registry{a, b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					name := []string{"admin1", "admin2"}[i]
					if round%2 == 0 {
						_, errs[i] = r.UpdateUser(ctx, name, UserUpdate{Role: &viewer})
					} else {
						errs[i] = r.DeleteUser(ctx, name)
					}
				}()
			}
			wg.Wait()
			var admins int
			if err := a.db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM users WHERE role = ?`, RoleAdmin).Scan(&admins); err != nil {
				t.Fatal(err)
			}
			if admins != 1 {
				t.Fatalf("round %d: %d admins left (errors %v, %v), want 1", round, admins, errs[0], errs[1])
			}
			refused := 0
			for _, err := range errs {
				if errors.Is(err, ErrLastAdmin) {
					refused++
				} else if err != nil {
					t.Fatal(err)
				}
			}
			if refused != 1 {
				t.Fatalf("round %d: %d changes refused, want 1", round, refused)
			}
			// Clean up for the next round: no admins at all is allowed
			// only here, in the database itself.
			if _, err := a.db.W.ExecContext(ctx, `DELETE FROM users`); err != nil {
				t.Fatal(err)
			}
			for _, r := range []*Registry{a, b} {
				r.Refresh(ctx, "admin1")
				r.Refresh(ctx, "admin2")
				if !r.shared() {
					r.mu.Lock()
					clear(r.users)
					r.mu.Unlock()
				}
			}
		}
	}
	t.Run("one node", func(t *testing.T) {
		r, _ := openTestRegistry(t)
		run(t, r, r)
	})
	if testPG != nil {
		t.Run("two nodes", func(t *testing.T) {
			a, b := twoNodes(t)
			run(t, a, b)
		})
	}
}
