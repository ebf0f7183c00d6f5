package dashboard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestLoginDuringPasswordChangeEnded: logins with a user's password race
// an administrator's change of that password, over HTTP, with real
// concurrency, round after round. Afterwards no session a login made with
// the old password is valid: the change ended the sessions that existed,
// and a login that checked the old password before the change and got its
// session after it was refused (401, and "credentials changed during
// login" in the audit log) instead of being given a session that the new
// password would keep alive. The sessions made with the new password
// work.
func TestLoginDuringPasswordChangeEnded(t *testing.T) {
	var au *devices.Audit
	e := newAPIEnv(t, withAudit(t, &au))
	e.reg.SetPasswordCost(bcrypt.MinCost)
	login := func(user, password string) (status int, token string, body string, err error) {
		j, _ := json.Marshal(map[string]string{"username": user, "password": password})
		res, err := e.srv.Client().Post(e.srv.URL+APIPrefix+"/auth/login", "application/json", bytes.NewReader(j))
		if err != nil {
			return 0, "", "", err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		var lr loginResponse
		_ = json.Unmarshal(b, &lr)
		return res.StatusCode, lr.Token, string(b), nil
	}
	// A user of its own each round: each racer's last login, with the
	// old password, fails, and failures from one address (at most 50)
	// and for one name there (5) close the login for a while.
	const rounds, racers = 10, 4
	changedDuring := 0
	for round := range rounds {
		user, old, next := fmt.Sprintf("racer%d", round), "old-password", "new-password"
		if _, err := e.reg.CreateUser(t.Context(), user, old, devices.RoleViewer); err != nil {
			t.Fatal(err)
		}
		var (
			mu     sync.Mutex
			tokens []string
			errs   []error
			ok     atomic.Int64
			done   = make(chan struct{})
			wg     sync.WaitGroup
		)
		for range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-done:
						return
					default:
					}
					status, tok, body, err := login(user, old)
					mu.Lock()
					switch {
					case err != nil:
						errs = append(errs, err)
					case status == http.StatusOK:
						tokens = append(tokens, tok)
						ok.Add(1)
					case status == http.StatusUnauthorized && strings.Contains(body, "credentials changed"):
						changedDuring++
					case status == http.StatusUnauthorized, status == http.StatusTooManyRequests:
						// The new password holds: the old one fails.
					default:
						errs = append(errs, fmt.Errorf("login: %d %s", status, body))
					}
					mu.Unlock()
					if err != nil || status != http.StatusOK {
						return
					}
				}
			}()
		}
		testmqtt.CheckFor(t, 30*time.Second, func() error {
			if ok.Load() < racers {
				return fmt.Errorf("%d logins so far", ok.Load())
			}
			return nil
		})
		res, body := e.do("PATCH", "/users/"+user, e.tokens["admin"], map[string]string{"password": next})
		e.mustStatus(res, body, http.StatusOK)
		close(done)
		wg.Wait()
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		for _, tok := range tokens {
			if res, body := e.do("GET", "/auth/me", tok, nil); res.StatusCode != http.StatusUnauthorized {
				t.Fatalf("round %d: a session made with the old password outlived its change: %d %s", round, res.StatusCode, body)
			}
		}
		fresh := e.login(user, next)
		res, body = e.do("GET", "/auth/me", fresh, nil)
		e.mustStatus(res, body, http.StatusOK)
	}
	t.Logf("%d logins refused as their password changed during them", changedDuring)
	if changedDuring > 0 {
		testmqtt.CheckFor(t, 30*time.Second, func() error {
			for _, en := range e.auditEntries() {
				if en.Action == devices.AuditLoginRefused && strings.HasPrefix(en.Actor, "racer") && en.Detail == "credentials changed during login" {
					return nil
				}
			}
			return fmt.Errorf("no audit entry for a login refused as its password changed")
		})
	}
}
