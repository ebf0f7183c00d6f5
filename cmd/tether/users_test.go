package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestUsersCLI(t *testing.T) {
	e := newCLIEnv(t)
	remote := []string{"--server", e.url, "--token", e.token}

	// A generated password is printed once and works.
	code, out, errs := tether(t, append([]string{"users", "add", "olga", "--role", "operator"}, remote...)...)
	if code != 0 || !strings.Contains(out, "user olga created with role operator") || !strings.Contains(out, "password: ") {
		t.Fatalf("add: %d %q %q", code, out, errs)
	}
	pw := strings.TrimSpace(strings.SplitN(strings.SplitN(out, "password: ", 2)[1], "\n", 2)[0])
	if _, err := e.reg.AuthenticateUser(t.Context(), "olga", pw); err != nil {
		t.Fatalf("printed password does not work: %v", err)
	}

	// --password-stdin reads it and prints none.
	old := stdin
	stdin = strings.NewReader("stdin-password-1\n")
	t.Cleanup(func() { stdin = old })
	code, out, errs = tether(t, append([]string{"users", "add", "vic", "--password-stdin", "--json"}, remote...)...)
	var u map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &u) != nil || u["username"] != "vic" || u["role"] != "viewer" || u["password"] != nil {
		t.Fatalf("add --password-stdin: %d %q %q", code, out, errs)
	}
	if _, err := e.reg.AuthenticateUser(t.Context(), "vic", "stdin-password-1"); err != nil {
		t.Fatalf("stdin password does not work: %v", err)
	}

	tests := []struct {
		name   string
		args   []string
		code   int
		errHas string
	}{
		{"duplicate", append([]string{"users", "add", "olga"}, remote...), 1, "409 conflict"},
		{"bad role", append([]string{"users", "add", "zed", "--role", "root"}, remote...), 1, "400 invalid"},
		{"no name", append([]string{"users", "add"}, remote...), 2, "want 1 argument"},
		{"viewer", []string{"users", "add", "zed", "--server", e.url, "--token", e.view}, 1, "403 forbidden"},
		{"unknown", []string{"users", "remove", "olga"}, 2, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := tether(t, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.errHas) {
				t.Fatalf("exit %d, want %d; stdout %q; stderr %q", code, tc.code, out, errs)
			}
		})
	}

	code, out, _ = tether(t, append([]string{"users", "list"}, remote...)...)
	for _, name := range []string{"admin", "viewer", "olga", "vic"} {
		if code != 0 || !strings.Contains(out, name) {
			t.Fatalf("list: %d %q", code, out)
		}
	}
	if strings.Contains(e.logs.String(), pw) || strings.Contains(e.logs.String(), "stdin-password-1") {
		t.Fatal("the server log holds a password")
	}
}
