package main

// The accounts end to end, on the whole app: a token revoked or a user
// deleted through the CLI or the dashboard loses HTTP and MQTT access
// within a second, and the audit log shows each step.

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// revokedWithin is how soon a revoked identity's MQTT connections must be
// closed and its HTTP requests refused (issue 13).
const revokedWithin = time.Second

// mqttUser is a paho client connected as a user; lost is closed when the
// broker drops it.
type mqttUser struct {
	c    paho.Client
	lost chan struct{}
}

func connectUser(t *testing.T, addr, clientID, user, password string) *mqttUser {
	t.Helper()
	u := &mqttUser{lost: make(chan struct{})}
	opts := paho.NewClientOptions().AddBroker("tcp://" + addr).
		SetClientID(clientID).SetUsername(user).SetPassword(password).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
		SetConnectionLostHandler(func(paho.Client, error) { close(u.lost) })
	u.c = paho.NewClient(opts)
	if tok := u.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: connect as %s: %v", clientID, user, tok.Error())
	}
	t.Cleanup(func() { u.c.Disconnect(50) })
	return u
}

// expectDropped waits up to revokedWithin for the broker to drop u.
func (u *mqttUser) expectDropped(t *testing.T, what string) {
	t.Helper()
	select {
	case <-u.lost:
	case <-time.After(revokedWithin):
		t.Fatalf("%s: the MQTT connection is still open after %v", what, revokedWithin)
	}
}

// expectConnected fails if u has been dropped.
func (u *mqttUser) expectConnected(t *testing.T, what string) {
	t.Helper()
	select {
	case <-u.lost:
		t.Fatalf("%s: the MQTT connection was closed", what)
	default:
	}
}

// httpStatus is the status of GET /api/v1/path with a bearer token.
func httpStatus(t *testing.T, base, token, path string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/api/v1"+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// auditHas polls GET /audit as admin until it holds every "action target"
// of want.
func auditHas(t *testing.T, admin *apiClient, want ...string) {
	t.Helper()
	checkFor(t, 5*time.Second, func() error {
		var l struct {
			Entries []struct{ Action, Actor, Target string }
		}
		admin.do("GET", "/audit?limit=1000", nil, &l)
		have := map[string]bool{}
		for _, e := range l.Entries {
			have[e.Action+" "+e.Target] = true
		}
		for _, w := range want {
			if !have[w] {
				return &missingEntry{w}
			}
		}
		return nil
	})
}

type missingEntry struct{ what string }

func (m *missingEntry) Error() string { return "the audit log has no " + m.what }

func TestCLIRevocationEndsMQTTAndHTTP(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", "admin-cli-password")
	cfg := testConfig(t)
	cfg.Auth.AllowAnonymous = false
	a := startTestApp(t, cfg)
	base := "http://" + a.httpAddr()
	noEnvLogin(t)
	cli := func(stdinText string, args ...string) string {
		t.Helper()
		withStdin(t, stdinText)
		code, out, errs := tether(t, args...)
		if code != 0 {
			t.Fatalf("tether %s: %d %q %q", strings.Join(args, " "), code, out, errs)
		}
		return out
	}
	cli("admin-cli-password\n", "login", "--server", base, "--username", "admin", "--password-stdin")
	cli("bob-password-1\n", "users", "add", "bob", "--role", "operator", "--password-stdin")
	var tok struct{ ID, Token string }
	if err := json.Unmarshal([]byte(cli("", "tokens", "create", "bob-ci", "--user", "bob", "--json")), &tok); err != nil {
		t.Fatal(err)
	}
	byToken := connectUser(t, a.mqttAddr(), "bob-token", "bob", tok.Token)
	byPassword := connectUser(t, a.mqttAddr(), "bob-password", "bob", "bob-password-1")
	if code := httpStatus(t, base, tok.Token, "/devices"); code != http.StatusOK {
		t.Fatalf("bob's token over HTTP: %d", code)
	}

	cli("", "tokens", "revoke", tok.ID)
	byToken.expectDropped(t, "revoked token")
	if code := httpStatus(t, base, tok.Token, "/devices"); code != http.StatusUnauthorized {
		t.Fatalf("revoked token over HTTP: %d, want 401", code)
	}
	byPassword.expectConnected(t, "another credential of the same user")

	cli("", "users", "rm", "bob")
	byPassword.expectDropped(t, "deleted user")
	res, err := http.Post(base+"/api/v1/auth/login", "application/json", strings.NewReader(`{"username":"bob","password":"bob-password-1"}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("deleted user logs in: %d", res.StatusCode)
	}
	// A refused MQTT login lands in the audit log too.
	opts := paho.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).SetClientID("bob-again").
		SetUsername("bob").SetPassword("bob-password-1").SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	if tok := paho.NewClient(opts).Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		t.Fatal("a deleted user connects over MQTT")
	}
	admin := uiLogin(t, base, "admin", "admin-cli-password")
	auditHas(t, admin, "user_created bob", "token_created "+tok.ID, "token_revoked "+tok.ID, "user_deleted bob", "login_refused ", "login ")
	var l struct {
		Entries []struct{ Action, Actor, Via, Remote string }
	}
	admin.do("GET", "/audit?action=login_refused", nil, &l)
	mqttRefusal := false
	for _, e := range l.Entries {
		mqttRefusal = mqttRefusal || (e.Actor == "bob" && strings.HasPrefix(e.Via, "mqtt/") && e.Remote == "127.0.0.1")
	}
	if !mqttRefusal {
		t.Fatalf("no refused MQTT login of bob in %+v", l.Entries)
	}
	cli("", "logout")
}

// TestUIAccounts: an admin manages users and tokens in the dashboard; a
// revoked token and a deleted user lose HTTP and MQTT access within a
// second; the audit page shows each step; a user changes their own
// password.
func TestUIAccounts(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	step(t, ctx, "log in as admin", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "confirm() says yes", evalJS(`window.confirm = () => true`))

	step(t, ctx, "add a user", chromedp.Navigate(base+"/#/users"), chromedp.WaitVisible(chromedp.CSS("#user-form")),
		setValue("#user-name", "eve"), setValue("#user-password", "eve-password-1"), setValue("#user-role", "operator"),
		chromedp.Click(chromedp.CSS("#user-submit")),
		chromedp.WaitVisible(chromedp.CSS(`#user-rows tr[data-user="eve"]`)))
	step(t, ctx, "create a token for eve", chromedp.Navigate(base+"/#/tokens"), chromedp.WaitVisible(chromedp.CSS("#token-form")),
		setValue("#token-name", "eve-laptop"), setValue("#token-user", "eve"),
		chromedp.Click(chromedp.CSS("#token-submit")),
		chromedp.WaitVisible(chromedp.CSS("#token-plaintext")))
	plain, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#token-plaintext').textContent`))
	if err != nil || !strings.HasPrefix(plain, "tth_") {
		t.Fatalf("token shown: %q %v", plain, err)
	}
	step(t, ctx, "close the token dialog", chromedp.Click(chromedp.CSS("#token-close")),
		waitJS(`[...document.querySelectorAll('#token-rows td')].some((td) => td.textContent === 'eve-laptop')`),
		waitJS(`!document.querySelector('#token-plaintext')`))
	shown, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.body.textContent.includes(`+jsString(plain)+`)`))
	if shown {
		t.Fatal("the token's plaintext is still on the page after its dialog closed")
	}

	byToken := connectUser(t, a.mqttAddr(), "eve-token", "eve", plain)
	byPassword := connectUser(t, a.mqttAddr(), "eve-password", "eve", "eve-password-1")
	if code := httpStatus(t, base, plain, "/devices"); code != http.StatusOK {
		t.Fatalf("eve's token over HTTP: %d", code)
	}
	step(t, ctx, "revoke eve's token", chromedp.Click(chromedp.CSS(`#token-rows .token-revoke`)),
		waitJS(`![...document.querySelectorAll('#token-rows td')].some((td) => td.textContent === 'eve-laptop')`))
	byToken.expectDropped(t, "token revoked in the dashboard")
	if code := httpStatus(t, base, plain, "/devices"); code != http.StatusUnauthorized {
		t.Fatalf("revoked token over HTTP: %d, want 401", code)
	}
	byPassword.expectConnected(t, "eve's password connection after her token was revoked")

	step(t, ctx, "demote eve", chromedp.Navigate(base+"/#/users"), chromedp.WaitVisible(chromedp.CSS(`#user-rows tr[data-user="eve"]`)),
		setValue(`select.user-role[data-user="eve"]`, "viewer"),
		evalJS(`document.querySelector('select.user-role[data-user="eve"]').dispatchEvent(new Event('change'))`))
	byPassword.expectDropped(t, "role changed") // it comes back with the new role
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	checkFor(t, 5*time.Second, func() error {
		var u struct{ Role string }
		admin.do("GET", "/users/eve", nil, &u)
		if u.Role != "viewer" {
			return &missingEntry{"role viewer for eve"}
		}
		return nil
	})
	again := connectUser(t, a.mqttAddr(), "eve-password", "eve", "eve-password-1")
	step(t, ctx, "delete eve", chromedp.Click(chromedp.CSS(`#user-rows .user-delete[data-user="eve"]`)),
		waitJS(`!document.querySelector('#user-rows tr[data-user="eve"]')`))
	again.expectDropped(t, "user deleted in the dashboard")

	// The last admin cannot delete themselves.
	step(t, ctx, "delete the last admin", chromedp.Click(chromedp.CSS(`#user-rows .user-delete[data-user="admin"]`)),
		waitJS(`document.querySelector('#users-error').textContent.includes('last admin')`))

	step(t, ctx, "audit page", chromedp.Navigate(base+"/#/audit"), chromedp.WaitVisible(chromedp.CSS("#audit-table")))
	for _, action := range []string{"login", "user_created", "token_created", "token_revoked", "role_changed", "user_deleted"} {
		step(t, ctx, "audit shows "+action, waitJS(`document.querySelector('#audit-rows tr[data-action="`+action+`"]')`))
	}
	screenshots(t, ctx, "audit")

	// Anyone changes their own password; the session ends with it.
	step(t, ctx, "own password", chromedp.Navigate(base+"/#/account"), chromedp.WaitVisible(chromedp.CSS("#password-form")),
		setValue("#pw-current", uiAdminPassword), setValue("#pw-new", "admin-new-password"), setValue("#pw-again", "admin-new-password"),
		chromedp.Click(chromedp.CSS("#pw-submit")),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
		waitJS(`document.querySelector('#login-form .error').textContent.includes('password was changed')`))
	step(t, ctx, "log in with the new password", loginSteps(base, "admin", "admin-new-password")...)
	auditHas(t, uiLogin(t, base, "admin", "admin-new-password"), "password_changed admin", "role_changed eve", "user_deleted eve")
}
