package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
)

// withStdin makes the CLI read s as its standard input until the test ends.
func withStdin(t *testing.T, s string) {
	t.Helper()
	old := stdin
	stdin = strings.NewReader(s)
	t.Cleanup(func() { stdin = old })
}

// noEnvLogin gives the test its own config directory and no token or
// server in the environment.
func noEnvLogin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir)
	t.Setenv("TETHER_TOKEN", "")
	t.Setenv("TETHER_SERVER", "")
	return filepath.Join(dir, "tether", "login.json")
}

func TestLoginSavesTokenAndLogoutRevokesIt(t *testing.T) {
	e := newCLIEnv(t)
	file := noEnvLogin(t)

	code, _, errs := tether(t, "devices", "list", "--server", e.url)
	if code != 1 || !strings.Contains(errs, "tether login") {
		t.Fatalf("without a token: %d %q, want a hint to run tether login", code, errs)
	}
	withStdin(t, "wrong-password\n")
	code, _, errs = tether(t, "login", "--server", e.url, "--username", "admin", "--password-stdin")
	if code != 1 || !strings.Contains(errs, "wrong user name or password") {
		t.Fatalf("wrong password: %d %q", code, errs)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a failed login left %s: %v", file, err)
	}
	withStdin(t, "")
	code, _, errs = tether(t, "login", "--server", e.url, "--username", "admin")
	if code != 1 || !strings.Contains(errs, "--password-stdin") {
		t.Fatalf("no terminal, no --password-stdin: %d %q", code, errs)
	}

	withStdin(t, "admin-password\n")
	code, out, errs := tether(t, "login", "--server", e.url, "--username", "admin", "--password-stdin")
	if code != 0 || !strings.Contains(out, "Logged in to "+e.url+" as admin (admin)") {
		t.Fatalf("login: %d %q %q", code, out, errs)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("saved login %s: %v %v, want mode 0600", file, st.Mode(), err)
	}
	if dst, _ := os.Stat(filepath.Dir(file)); dst.Mode().Perm() != 0o700 {
		t.Fatalf("config dir mode %v", dst.Mode())
	}
	var saved savedLogin
	b, _ := os.ReadFile(file)
	if err := json.Unmarshal(b, &saved); err != nil || saved.Server != e.url || saved.Username != "admin" || saved.TokenID == "" {
		t.Fatalf("saved %s (%v)", b, err)
	}
	if id, err := e.reg.AuthenticateToken(t.Context(), saved.Token); err != nil || id.Name != "admin" {
		t.Fatalf("saved token: %+v %v", id, err)
	}
	if saved.ExpiresAt == nil {
		t.Fatal("the login token never expires; want the server's default")
	}
	if strings.Contains(out, saved.Token) {
		t.Fatal("login printed the token")
	}

	// Logging in again replaces the saved token and revokes the old one.
	withStdin(t, "admin-password\n")
	if code, out, errs := tether(t, "login", "--server", e.url, "--username", "admin", "--password-stdin"); code != 0 {
		t.Fatalf("second login: %d %q %q", code, out, errs)
	}
	first := saved
	b, _ = os.ReadFile(file)
	if err := json.Unmarshal(b, &saved); err != nil || saved.TokenID == first.TokenID {
		t.Fatalf("second login saved %s (%v)", b, err)
	}
	if _, err := e.reg.AuthenticateToken(t.Context(), first.Token); err == nil {
		t.Fatal("the token of the replaced login still works")
	}

	// Every remote command uses it, with no --server or --token.
	code, out, errs = tether(t, "users", "list")
	if code != 0 || !strings.Contains(out, "viewer") {
		t.Fatalf("users list with the saved login: %d %q %q", code, out, errs)
	}
	// A token given explicitly wins.
	code, _, errs = tether(t, "users", "list", "--token", e.view)
	if code != 1 || !strings.Contains(errs, "403") {
		t.Fatalf("--token over the saved login: %d %q", code, errs)
	}
	// The saved token is never sent to another server.
	var mu sync.Mutex
	var auth []string
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"error":{"code":"unauthorized","message":"no"}}`))
	}))
	defer other.Close()
	tether(t, "devices", "list", "--server", other.URL)
	mu.Lock()
	if len(auth) != 1 || auth[0] != "" {
		t.Fatalf("another server received Authorization %q", auth)
	}
	mu.Unlock()

	if savedToken(e.url+"/") != saved.Token || savedToken(other.URL) != "" {
		t.Fatal("savedToken (tether sim's --token) picks the wrong server's token")
	}

	code, out, errs = tether(t, "logout")
	if code != 0 || !strings.Contains(out, "Logged out") {
		t.Fatalf("logout: %d %q %q", code, out, errs)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("logout left %s", file)
	}
	if _, err := e.reg.AuthenticateToken(t.Context(), saved.Token); err == nil {
		t.Fatal("logout did not revoke the token on the server")
	}
	code, out, _ = tether(t, "logout")
	if code != 0 || !strings.Contains(out, "Not logged in") {
		t.Fatalf("second logout: %d %q", code, out)
	}
	code, _, errs = tether(t, "users", "list", "--server", e.url)
	if code != 1 || !strings.Contains(errs, "run tether login") {
		t.Fatalf("after logout: %d %q", code, errs)
	}
}

func TestLogoutOfAnUnreachableServer(t *testing.T) {
	noEnvLogin(t)
	if _, err := saveLogin(savedLogin{Server: "http://127.0.0.1:1", Username: "x", Token: "tth_x", TokenID: "tok-x"}); err != nil {
		t.Fatal(err)
	}
	code, _, errs := tether(t, "logout")
	if code != 1 || !strings.Contains(errs, "--force") {
		t.Fatalf("logout with the server down: %d %q", code, errs)
	}
	code, _, errs = tether(t, "logout", "--force")
	if code != 0 || !strings.Contains(errs, "stays valid") {
		t.Fatalf("logout --force: %d %q", code, errs)
	}
	if _, ok, _ := loadLogin(); ok {
		t.Fatal("logout --force kept the login")
	}
}

func TestUsersAndTokensCLI(t *testing.T) {
	e := newCLIEnv(t)
	noEnvLogin(t)
	admin := []string{"--server", e.url, "--token", e.token}
	viewer := []string{"--server", e.url, "--token", e.view}
	run := func(stdinText string, want int, args ...string) (string, string) {
		t.Helper()
		withStdin(t, stdinText)
		code, out, errs := tether(t, args...)
		if code != want {
			t.Fatalf("tether %s: exit %d, want %d; stdout %q; stderr %q", strings.Join(args, " "), code, want, out, errs)
		}
		return out, errs
	}

	run("bob-password-1\n", 0, append([]string{"users", "add", "bob", "--password-stdin"}, admin...)...)
	out, _ := run("", 0, append([]string{"users", "role", "bob", "operator"}, admin...)...)
	if !strings.Contains(out, "bob now has role operator") {
		t.Fatalf("role: %q", out)
	}
	run("bob-password-2\n", 0, append([]string{"users", "passwd", "bob", "--password-stdin"}, admin...)...)
	if _, err := e.reg.AuthenticateUser(t.Context(), "bob", "bob-password-2"); err != nil {
		t.Fatalf("admin set bob's password: %v", err)
	}
	// Anyone changes their own password with the current one.
	_, errs := run("wrong-current\nviewer-password-2\n", 1, append([]string{"users", "passwd", "--password-stdin"}, viewer...)...)
	if !strings.Contains(errs, "current_password is wrong") {
		t.Fatalf("wrong current password: %q", errs)
	}
	run("viewer-password\nviewer-password-2\n", 0, append([]string{"users", "passwd", "--password-stdin"}, viewer...)...)
	if _, err := e.reg.AuthenticateUser(t.Context(), "viewer", "viewer-password-2"); err != nil {
		t.Fatalf("own password: %v", err)
	}

	out, _ = run("", 0, append([]string{"tokens", "create", "ci", "--user", "bob", "--ttl", "0", "--json"}, admin...)...)
	var tok struct {
		ID, Token string
		ExpiresAt *string `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil || !strings.HasPrefix(tok.Token, devices.TokenPrefix) || tok.ExpiresAt != nil {
		t.Fatalf("tokens create --ttl 0: %q %v", out, err)
	}
	// --ttl takes days, like every duration flag.
	out, _ = run("", 0, append([]string{"tokens", "create", "month", "--ttl", "30d", "--json"}, viewer...)...)
	var month struct {
		ExpiresAt *time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(out), &month); err != nil || month.ExpiresAt == nil ||
		time.Until(*month.ExpiresAt).Round(time.Hour) != 30*24*time.Hour {
		t.Fatalf("tokens create --ttl 30d: %q %v", out, err)
	}
	out, _ = run("", 0, append([]string{"tokens", "create", "laptop"}, viewer...)...)
	if !strings.Contains(out, "shown only now") || !strings.Contains(out, "for viewer, expires") {
		t.Fatalf("tokens create: %q", out)
	}
	out, _ = run("", 0, append([]string{"tokens", "list"}, admin...)...)
	if !strings.Contains(out, tok.ID) || !strings.Contains(out, "laptop") || !strings.Contains(out, "never") {
		t.Fatalf("admin's tokens list: %q", out)
	}
	out, _ = run("", 0, append([]string{"tokens", "list"}, viewer...)...)
	if strings.Contains(out, tok.ID) || !strings.Contains(out, "laptop") {
		t.Fatalf("viewer's tokens list: %q", out)
	}
	if strings.Contains(out, devices.TokenPrefix) {
		t.Fatalf("tokens list shows a plaintext: %q", out)
	}
	// A viewer may not see others' tokens, revoke them, delete users or
	// change roles.
	for _, args := range [][]string{
		{"tokens", "list", "--user", "bob"},
		{"users", "rm", "bob"},
		{"users", "role", "bob", "admin"},
		{"users", "passwd", "bob", "--password-stdin"},
		{"users", "list"},
	} {
		_, errs := run("new-password-9\n", 1, append(args, viewer...)...)
		if !strings.Contains(errs, "403") {
			t.Fatalf("viewer %v: %q", args, errs)
		}
	}
	_, errs = run("", 1, append([]string{"tokens", "revoke", tok.ID}, viewer...)...)
	if !strings.Contains(errs, "404") {
		t.Fatalf("viewer revokes bob's token: %q", errs)
	}
	run("", 0, append([]string{"tokens", "revoke", tok.ID}, admin...)...)
	if _, err := e.reg.AuthenticateToken(t.Context(), tok.Token); err == nil {
		t.Fatal("revoked token still works")
	}
	_, errs = run("", 1, append([]string{"users", "rm", "admin"}, admin...)...)
	if !strings.Contains(errs, "409") || !strings.Contains(errs, "last admin") {
		t.Fatalf("rm the last admin: %q", errs)
	}
	_, errs = run("", 1, append([]string{"users", "role", "admin", "viewer"}, admin...)...)
	if !strings.Contains(errs, "last admin") {
		t.Fatalf("demote the last admin: %q", errs)
	}
	run("", 0, append([]string{"users", "rm", "bob"}, admin...)...)
	if _, err := e.reg.User(t.Context(), "bob"); err == nil {
		t.Fatal("bob is still there")
	}
	for _, args := range [][]string{{"tokens", "create", "x", "--ttl", "soon"}, {"tokens", "revoke"}, {"users", "role", "bob"}, {"tokens", "delete", "x"}} {
		run("", 2, append(args, admin...)...)
	}
}

func TestAccountCommandsHelpOnStdout(t *testing.T) {
	for _, args := range [][]string{
		{"login", "--help"}, {"logout", "--help"}, {"tokens", "--help"}, {"users", "--help"},
		{"tokens", "list", "--help"}, {"tokens", "create", "--help"}, {"tokens", "revoke", "-h"},
		{"users", "rm", "--help"}, {"users", "passwd", "--help"}, {"users", "role", "--help"},
		{"users", "add", "--help"}, {"users", "list", "--help"},
	} {
		code, out, errs := tether(t, args...)
		if code != 0 || !strings.Contains(out, "Usage: tether") || errs != "" {
			t.Errorf("%v: exit %d; stdout %q; stderr %q", args, code, out, errs)
		}
	}
}
