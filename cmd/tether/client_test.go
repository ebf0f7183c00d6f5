package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tether-iot/tether/dashboard"
	"github.com/tether-iot/tether/devices"
)

// cliEnv is a real API over a real SQLite file, for the CLI to talk to.
type cliEnv struct {
	url   string
	token string // an admin's API token
	view  string // a viewer's API token
	reg   *devices.Registry
	logs  *lockedWriter
	srv   *httptest.Server
}

func newCLIEnv(t *testing.T) *cliEnv {
	t.Helper()
	return newCLIEnvWith(t, httptest.NewServer)
}

// newCLIEnvWith starts the API with start (httptest.NewServer or
// httptest.NewTLSServer).
func newCLIEnvWith(t *testing.T, start func(http.Handler) *httptest.Server) *cliEnv {
	t.Helper()
	ctx := context.Background()
	logs := &lockedWriter{w: &bytes.Buffer{}}
	log := slog.New(slog.NewTextHandler(logs, nil))
	db, err := devices.OpenDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	reg, err := devices.OpenRegistry(ctx, db, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	e := &cliEnv{reg: reg, logs: logs}
	for _, u := range []string{"admin", "viewer"} {
		if _, err := reg.CreateUser(ctx, u, u+"-password", u); err != nil {
			t.Fatal(err)
		}
	}
	if e.token, _, err = reg.CreateToken(ctx, "admin", "cli", 0); err != nil {
		t.Fatal(err)
	}
	if e.view, _, err = reg.CreateToken(ctx, "viewer", "cli", 0); err != nil {
		t.Fatal(err)
	}
	api, err := dashboard.NewAPI(dashboard.APIOptions{Registry: reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := start(dashboard.NewHandler(dashboard.Options{API: api, Logger: log}))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	e.srv = srv
	return e
}

// lockedWriter serialises writes from the server's goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// tether runs the binary's entry point with args and returns the exit code,
// stdout and stderr.
func tether(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestAPIClientErrors(t *testing.T) {
	e := newCLIEnv(t)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html>bad gateway</html>", http.StatusBadGateway)
	}))
	defer proxy.Close()
	tests := []struct {
		name, server, token, path string
		status                    int
		code                      string
	}{
		{"no token", e.url, "", "/devices", 401, "unauthorized"},
		{"wrong token", e.url, "tth_wrong", "/devices", 401, "unauthorized"},
		{"viewer writes", e.url, e.view, "/devices/x/secret", 403, "forbidden"},
		{"not found", e.url, e.token, "/devices/nope", 404, "not_found"},
		{"not the API", proxy.URL, e.token, "/devices", 502, "bad_gateway"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := newServerClient(tc.server, tc.token)
			if err != nil {
				t.Fatal(err)
			}
			method := "GET"
			if strings.HasSuffix(tc.path, "/secret") {
				method = "POST"
			}
			err = c.do(context.Background(), method, tc.path, nil, &struct{}{})
			var ae *apiError
			if !errors.As(err, &ae) || ae.Status != tc.status || ae.Code != tc.code || ae.Message == "" {
				t.Fatalf("got %#v (%v)", ae, err)
			}
			if strings.Contains(err.Error(), "<html>") {
				t.Fatalf("error shows the body: %v", err)
			}
		})
	}
	for _, bad := range []string{"", "127.0.0.1:8080", "ftp://x", "http://"} {
		if _, err := newServerClient(bad, ""); err == nil {
			t.Errorf("server %q accepted", bad)
		}
	}
}

func TestRemoteFlagsTrustCA(t *testing.T) {
	e := newCLIEnvWith(t, httptest.NewTLSServer)
	ca := filepath.Join(t.TempDir(), "cert.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := tether(t, "devices", "list", "--server", e.url, "--token", e.token, "--ca", ca)
	if code != 0 || !strings.Contains(out, "ID") {
		t.Fatalf("with --ca: %d %q %q", code, out, errs)
	}
	code, _, errs = tether(t, "devices", "list", "--server", e.url, "--token", e.token)
	if code != 1 || !strings.Contains(errs, "certificate") {
		t.Fatalf("without --ca: %d %q", code, errs)
	}
	code, _, errs = tether(t, "devices", "list", "--server", e.url, "--token", e.token, "--ca", filepath.Join(t.TempDir(), "none.pem"))
	if code != 1 || !strings.Contains(errs, "--ca") {
		t.Fatalf("missing --ca file: %d %q", code, errs)
	}
}
