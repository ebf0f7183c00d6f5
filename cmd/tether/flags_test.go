package main

import (
	"strings"
	"testing"
)

// TestDurationFlagsTakeDays: every duration flag parses with
// configs.ParseDuration, so "1d" works wherever "24h" does (README:
// durations take d everywhere) and a bad value is a usage error naming
// the flag. Each command is stopped right after its flags by a later
// check (an unreachable server, a refused URL scheme, a listener off).
func TestDurationFlagsTakeDays(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", "flags-test-password") // else demo sets it in this process
	noEnvLogin(t)
	for _, tc := range []struct {
		name  string
		args  []string // the duration goes last
		after string   // what the command says once its flags are taken
	}{
		{"tokens create --ttl", []string{"tokens", "create", "ci", "--server", "http://127.0.0.1:1", "--token", "tth_x", "--ttl"}, "create token"},
		{"doctor --timeout", []string{"doctor", "http://127.0.0.1:1", "--timeout"}, "unknown scheme"},
		{"demo --interval", []string{"demo", "--http-addr", "off", "--interval"}, "the demo needs this listener"},
		{"cmd send --timeout", []string{"cmd", "send", "d-1", "reboot", "--server", "http://127.0.0.1:1", "--token", "tth_x", "--timeout"}, "127.0.0.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := tether(t, append(tc.args, "1d")...)
			if code != 1 || !strings.Contains(errs, tc.after) {
				t.Errorf("1d: exit %d, want 1 with %q; stdout %q; stderr %q", code, tc.after, out, errs)
			}
			code, out, errs = tether(t, append(tc.args, "soon")...)
			flagName := strings.TrimLeft(tc.args[len(tc.args)-1], "-")
			if code != 2 || !strings.Contains(errs, flagName) || !strings.Contains(errs, `"soon"`) {
				t.Errorf("soon: exit %d, want 2 naming %s; stdout %q; stderr %q", code, flagName, out, errs)
			}
		})
	}
}
