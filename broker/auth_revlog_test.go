package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/devices"
)

// TestRevLogMissed: a connection sees the revocations made since its mark
// that match its identity — all of a name's connections, or only those
// of one session or token — and whether one purges; once more than
// revLogSize came after its mark it cannot tell, and counts as revoked.
func TestRevLogMissed(t *testing.T) {
	var l revLog
	ann := devices.Identity{Kind: devices.KindUser, Name: "ann", Via: "password"}
	annSession := devices.Identity{Kind: devices.KindUser, Name: "ann", Via: "session", SessionID: "s1"}
	dev := devices.Identity{Kind: devices.KindDevice, Name: "d1", Via: "secret"}
	l.add(devices.Revocation{Name: "ann"}) // before the mark: not missed
	from := l.mark()
	if from != 1 {
		t.Fatalf("mark %d, want 1", from)
	}
	for _, id := range []devices.Identity{ann, annSession, dev} {
		if r, p, lost := l.missed(from, id); r || p || lost {
			t.Fatalf("%+v: nothing since the mark, got revoked=%v purge=%v lost=%v", id, r, p, lost)
		}
	}
	l.add(devices.Revocation{Name: "ann", SessionID: "s2"}) // another session's logout
	l.add(devices.Revocation{Name: "bob"})
	if r, _, _ := l.missed(from, annSession); r {
		t.Fatal("another session's logout revoked this one")
	}
	if r, _, _ := l.missed(from, ann); r {
		t.Fatal("a session's logout revoked a password login")
	}
	l.add(devices.Revocation{Name: "ann", SessionID: "s1"})
	if r, p, lost := l.missed(from, annSession); !r || p || lost {
		t.Fatalf("own logout: revoked=%v purge=%v lost=%v", r, p, lost)
	}
	l.add(devices.Revocation{Name: "d1", Purge: true})
	if r, p, lost := l.missed(from, dev); !r || !p || lost {
		t.Fatalf("device deleted: revoked=%v purge=%v lost=%v", r, p, lost)
	}
	// A new mark sees none of that.
	from = l.mark()
	if r, _, _ := l.missed(from, dev); r {
		t.Fatal("a revocation before the mark counted")
	}
	// revLogSize revocations after the mark are all there; one more, and
	// the log cannot tell: revoked, conservatively, whoever it is.
	for range revLogSize {
		l.add(devices.Revocation{Name: "someone-else"})
	}
	if r, _, lost := l.missed(from, dev); r || lost {
		t.Fatalf("%d revocations of others: revoked=%v lost=%v", revLogSize, r, lost)
	}
	l.add(devices.Revocation{Name: "someone-else"})
	if r, _, lost := l.missed(from, dev); !r || !lost {
		t.Fatalf("%d revocations of others: revoked=%v lost=%v, want both", revLogSize+1, r, lost)
	}
}

// liveAs returns the client ids of the connections the hook holds as
// name that are not being revoked.
func liveAs(e *authEnv, name string) []string {
	var ids []string
	e.auth.clients.Range(func(k, v any) bool {
		cl, c := k.(*mqtt.Client), v.(*conn)
		if c.id.Name == name && !c.revoked && !cl.Closed() {
			ids = append(ids, cl.ID)
		}
		return true
	})
	return ids
}

// TestConnectDuringRevocationEnded: a revocation — a new password, a new
// role, a device disabled, an API token revoked — made after a CONNECT's
// credentials were checked but before the hook listed the connection
// (driven there with the hook's checked seam, which waits until the
// revocation has looked at every listed connection) used to miss it, and
// the connection lived on under credentials that no longer held (a
// demoted admin kept admin rights). Now the connection finds the
// revocation in the log once listed and ends, a real paho client seeing
// its connection fail; the new credentials connect.
func TestConnectDuringRevocationEnded(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	e.user(t, "root", devices.RoleAdmin) // so that "boss" may be demoted
	viewer, newPassword := devices.RoleViewer, "a-new-password"
	cases := []struct {
		name, user, pass string
		revoke           func() error
		after            string // password that connects afterwards, if any
	}{
		{name: "password", user: "pat", pass: e.user(t, "pat", devices.RoleOperator),
			revoke: func() error {
				_, err := e.reg.UpdateUser(ctx, "pat", devices.UserUpdate{Password: &newPassword})
				return err
			}, after: newPassword},
		{name: "role", user: "boss", pass: e.user(t, "boss", devices.RoleAdmin),
			revoke: func() error {
				_, err := e.reg.UpdateUser(ctx, "boss", devices.UserUpdate{Role: &viewer})
				return err
			}},
		{name: "device disabled", user: "dev1", pass: e.device(t, "dev1"),
			revoke: func() error {
				f := false
				_, err := e.reg.UpdateDevice(ctx, "dev1", devices.DevicePatch{Enabled: &f})
				return err
			}},
	}
	e.user(t, "tess", devices.RoleOperator)
	token, tok, err := e.reg.CreateToken(ctx, "tess", "script", 0)
	if err != nil {
		t.Fatal(err)
	}
	cases = append(cases, struct {
		name, user, pass string
		revoke           func() error
		after            string
	}{name: "token revoked", user: "tess", pass: token, revoke: func() error { return e.reg.RevokeToken(ctx, tok.ID) }})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clientID := tc.user
			var once sync.Once
			checked := func(cl *mqtt.Client) {
				if cl.ID != clientID {
					return
				}
				once.Do(func() {
					if err := tc.revoke(); err != nil {
						t.Error(err)
					}
					e.auth.wg.Wait() // the revocation has looked at every listed connection
				})
			}
			e.auth.checked.Store(&checked)
			defer e.auth.checked.Store(nil)
			lost := make(chan struct{})
			c, err := authClient(t, "tcp://"+e.tcp, clientID, tc.user, tc.pass, func() { close(lost) })
			if err == nil {
				select {
				case <-lost:
				case <-time.After(10 * time.Second):
					t.Fatal("the connection outlived the revocation made as it logged in")
				}
				c.Disconnect(0)
			}
			checkFor(t, 10*time.Second, func() error {
				if ids := liveAs(e, tc.user); len(ids) > 0 {
					return fmt.Errorf("live as %s: %v", tc.user, ids)
				}
				return nil
			})
			if tc.after != "" {
				authMustClient(t, "tcp://"+e.tcp, clientID+"-again", tc.user, tc.after).Disconnect(0)
			}
		})
	}
	// The demoted admin comes back as what they are now.
	c := authMustClient(t, "tcp://"+e.tcp, "boss-again", "boss", "pw-boss-123")
	defer c.Disconnect(0)
	checkFor(t, 5*time.Second, func() error {
		for _, id := range liveAs(e, "boss") {
			if cl, ok := e.b.Server.Clients.Get(id); ok {
				if got, _ := e.auth.Identity(cl); got.Role != devices.RoleViewer {
					return fmt.Errorf("boss connected as %q", got.Role)
				}
				return nil
			}
		}
		return fmt.Errorf("boss not connected")
	})
}

// TestConnectsRacingPasswordChangeEnded: many clients connect, over and
// over, with a user's password while it is changed, with real concurrency
// and no seam; afterwards none of their connections is left: each was
// listed before the change's revocation looked, or found it in the log.
func TestConnectsRacingPasswordChangeEnded(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	const rounds, racers = 5, 8
	for round := range rounds {
		user := fmt.Sprint("racer", round)
		pass := e.user(t, user, devices.RoleViewer)
		var (
			done = make(chan struct{})
			wg   sync.WaitGroup
			ok   atomic.Int64
		)
		for i := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-done:
						return
					default:
					}
					c, err := authClient(t, "tcp://"+e.tcp, fmt.Sprintf("%s-%d-%d", user, i, n), user, pass, nil)
					if err != nil {
						return // refused: the new password holds
					}
					ok.Add(1)
					_ = c // kept open: it must end with the change
				}
			}()
		}
		checkFor(t, 30*time.Second, func() error {
			if ok.Load() < racers {
				return fmt.Errorf("%d connections so far", ok.Load())
			}
			return nil
		})
		next := "a-new-password"
		if _, err := e.reg.UpdateUser(ctx, user, devices.UserUpdate{Password: &next}); err != nil {
			t.Fatal(err)
		}
		close(done)
		wg.Wait()
		checkFor(t, 15*time.Second, func() error {
			if ids := liveAs(e, user); len(ids) > 0 {
				return fmt.Errorf("round %d: %d connections made with the old password are still live: %v", round, len(ids), ids)
			}
			return nil
		})
	}
}
