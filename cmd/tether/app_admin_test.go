package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testlog"
)

// TestAdminPasswordIgnoredWarns: TETHER_ADMIN_PASSWORD sets only the
// first admin's password. Given on a later start, when the data
// directory has users, it is not used; a warning says so, why, and how to
// set a password, unless it is admin's password anyway. The password is
// never in the log.
func TestAdminPasswordIgnoredWarns(t *testing.T) {
	cfg := testConfig(t)
	const ignored = `level=WARN msg="TETHER_ADMIN_PASSWORD is ignored: the data directory ` // then the path
	start := func(password string) string {
		t.Helper()
		t.Setenv("TETHER_ADMIN_PASSWORD", password)
		var logBuf testlog.Buffer
		a, err := startApp(cfg, slog.New(slog.NewTextHandler(&logBuf, nil)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.shutdown(ctx); err != nil {
			t.Error(err)
		}
		log := logBuf.String()
		if strings.Contains(log, password) {
			t.Errorf("the log holds the password %q:\n%s", password, log)
		}
		return log
	}

	// The first start creates admin with it: nothing to warn about.
	if log := start("first-password-1"); strings.Contains(log, ignored) || !strings.Contains(log, "password_from_env=true") {
		t.Fatalf("first start:\n%s", log)
	}
	// Later starts with the same one (a deployment that keeps it set):
	// it is admin's password, logging in with it works.
	if log := start("first-password-1"); strings.Contains(log, ignored) {
		t.Fatalf("restart with admin's password warned:\n%s", log)
	}
	// Another one is ignored, and the warning says why and what to do.
	log := start("change-me-please")
	for _, want := range []string{
		ignored + cfg.DataDir + " already has users",
		"sets only the password of the first admin",
		"tether users passwd NAME",
		"PATCH /api/v1/users/{name}",
		"empty data directory (--data-dir)",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the log does not say %q:\n%s", want, log)
		}
	}
}
