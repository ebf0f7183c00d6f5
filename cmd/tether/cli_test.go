package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testlog"
)

// TestVersion: `tether --version` and `tether version` print the version
// and the commit from the build info, on stdout, and exit 0.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}, {"-version"}} {
		code, out, errs := tether(t, args...)
		if code != 0 || !strings.HasPrefix(out, "tether ") || !strings.Contains(out, " commit ") || errs != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	bi := &debug.BuildInfo{Main: debug.Module{Version: "v1.4.2"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef"}, {Key: "vcs.time", Value: "2026-11-30T12:00:00Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	if got := versionLine(bi); !strings.HasPrefix(got, "tether v1.4.2 commit 0123456789abcdef (2026-11-30T12:00:00Z, modified) go") {
		t.Errorf("versionLine = %q", got)
	}
	if got := versionLine(&debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}); !strings.HasPrefix(got, "tether dev commit unknown ") {
		t.Errorf("versionLine of a devel build = %q", got)
	}
}

// TestHelpOnStdout: every command's --help (and -h) is output, not an
// error: usage on stdout, nothing on stderr, exit 0.
func TestHelpOnStdout(t *testing.T) {
	for name := range commands {
		for _, h := range []string{"--help", "-h"} {
			code, out, errs := tether(t, name, h)
			if code != 0 || !strings.Contains(out, "Usage: tether "+name) || errs != "" {
				t.Errorf("tether %s %s: exit %d, stdout %q, stderr %q", name, h, code, out, errs)
			}
		}
	}
	for _, args := range [][]string{{"--help"}, {"help"}, {"help", "sim"}, {"devices", "list", "--help"}} {
		if code, out, errs := tether(t, args...); code != 0 || !strings.Contains(out, "Usage: tether") || errs != "" {
			t.Errorf("tether %v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	// A usage error still goes to stderr with exit 2.
	if code, out, errs := tether(t, "backup", "--nope"); code != 2 || out != "" || !strings.Contains(errs, "Usage: tether backup") {
		t.Errorf("bad flag: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

// TestServeHelpShowsDefaults: `serve --help` shows each default.
func TestServeHelpShowsDefaults(t *testing.T) {
	_, out, _ := tether(t, "serve", "--help")
	for _, want := range []string{`(default ":1883")`, `(default ":8080")`, `(default ":8883")`, `(default ":8443")`, `(default "./data")`, `(default "info")`, `(default "text")`} {
		if !strings.Contains(out, want) {
			t.Errorf("serve --help lacks %s:\n%s", want, out)
		}
	}
}

// TestServeRefusals: start-up mistakes stop `tether serve` with a message
// that says what to change, before the database is created.
func TestServeRefusals(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := busy.Addr().String()
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"http port in use", []string{"--mqtt-addr", "127.0.0.1:0", "--http-addr", inUse}, []string{"already in use", "--http-addr", "TETHER_HTTP_ADDR"}},
		{"mqtt port in use", []string{"--mqtt-addr", inUse, "--http-addr", "127.0.0.1:0"}, []string{"already in use", "--mqtt-addr", "TETHER_MQTT_ADDR"}},
		{"no listeners", []string{"--mqtt-addr", "off", "--http-addr", "off"}, []string{"every listener is off"}},
		{"bad port", []string{"--mqtt-addr", ":99999", "--http-addr", "127.0.0.1:0"}, []string{"mqtt.addr", "0 to 65535"}},
		{"bad host", []string{"--mqtt-addr", "127.0.0.1:0", "--http-addr", "no such host:80"}, []string{"http.addr", "not an IP address or a host name"}},
		{"bad duration", []string{"--mqtt-addr", "127.0.0.1:0"}, []string{"TETHER_TELEMETRY_RETENTION", "7d"}},
		{"bad postgres url", []string{"--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--postgres", "mysql://db/tether"}, []string{"storage.postgres_url"}},
		// The password is not shown.
		{"postgres unreachable", []string{"--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
			"--postgres", "postgres://tether:pw-s3cret@127.0.0.1:1/tether?connect_timeout=2"}, []string{"open database postgres://tether:xxxxx@127.0.0.1:1/tether"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			if tc.name == "bad duration" {
				t.Setenv("TETHER_TELEMETRY_RETENTION", "a week")
			}
			args := append([]string{"serve", "--data-dir", dir, "--tls-addr", "off", "--https-addr", "off"}, tc.args...)
			code, _, errs := tether(t, args...)
			if code == 0 {
				t.Fatal("serve started")
			}
			for _, w := range tc.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q lacks %q", errs, w)
				}
			}
			if strings.Contains(errs, "pw-s3cret") {
				t.Errorf("stderr shows the database password: %q", errs)
			}
			if _, err := os.Stat(filepath.Join(dir, devices.FileName)); err == nil {
				t.Errorf("the database was created")
			}
		})
	}
}

// TestServeDays: a duration in days is taken from a flag-less variable.
func TestServeDays(t *testing.T) {
	cfg, err := loadConfig(nil, os.Stderr, func(k string) (string, bool) {
		return "30d", k == "TETHER_TELEMETRY_RETENTION"
	})
	if err != nil || cfg.Telemetry.Retention != 30*24*time.Hour {
		t.Fatalf("retention %v, %v", cfg.Telemetry.Retention, err)
	}
}

// TestDataDirLockTwoServers: two real processes on one data directory;
// the second stops at once with a message naming the directory, and the
// first goes on serving.
func TestDataDirLockTwoServers(t *testing.T) {
	bin := tetherBinary(t)
	first := newTetherProc(t, bin)
	first.start(t)
	defer first.stop(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := filepath.Join(first.dir, "data")
	second := exec.CommandContext(ctx, bin, "serve", "--data-dir", dir,
		"--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--tls-addr", "off", "--https-addr", "off")
	out, err := second.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("the second server did not stop: %s", out)
	}
	abs, _ := filepath.Abs(dir)
	if err == nil || !strings.Contains(string(out), abs) || !strings.Contains(string(out), "another tether process") {
		t.Fatalf("second server: %v\n%s", err, out)
	}
	if !first.running() {
		t.Fatalf("the first server stopped:\n%s", first.log())
	}
	resp, err := http.Get("http://" + first.http + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("first server after the second tried: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestStartupLog: at INFO, start-up says where everything is in one line
// ("open http://…/"), without the engine's per-hook lines, and every line
// names its component.
func TestStartupLog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errs testlog.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--data-dir", dir, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
			"--tls-addr", "off", "--https-addr", "off"}, &out, &errs)
	}()
	checkFor(t, 20*time.Second, func() error {
		select {
		case code := <-done:
			t.Fatalf("serve exited %d:\n%s", code, errs.String())
		default:
		}
		if !strings.Contains(errs.String(), "tether ready") {
			return fmt.Errorf("no start-up line yet:\n%s", errs.String())
		}
		return nil
	})
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d:\n%s", code, errs.String())
	}
	log := errs.String()
	abs, _ := filepath.Abs(dir)
	var ready []string
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if !strings.Contains(line, " component=") {
			t.Errorf("line without a component: %s", line)
		}
		if strings.Contains(line, "added hook") || strings.Contains(line, "stopping hook") || strings.Contains(line, "attached listener") {
			t.Errorf("engine lifecycle line at INFO: %s", line)
		}
		if strings.Contains(line, "tether ready") {
			ready = append(ready, line)
		}
	}
	if len(ready) != 1 {
		t.Fatalf("%d start-up lines:\n%s", len(ready), log)
	}
	for _, want := range []string{"open http://127.0.0.1:", "mqtt=tcp://127.0.0.1:", "http=http://127.0.0.1:", "ws=ws://127.0.0.1:", "data_dir=" + abs} {
		if !strings.Contains(ready[0], want) {
			t.Errorf("start-up line lacks %q: %s", want, ready[0])
		}
	}
	if got := browserHost("[::]:8080"); got != "localhost:8080" {
		t.Errorf("browserHost([::]:8080) = %s", got)
	}
	if got := browserHost(":8080"); got != "localhost:8080" {
		t.Errorf("browserHost(:8080) = %s", got)
	}
}

// TestStartupLogPublicURL: behind a proxy (http.public_url set) the
// start-up line of the real binary says to open the public URL, not the
// listen address, and still lists the listeners.
func TestStartupLogPublicURL(t *testing.T) {
	p := newTetherProc(t, tetherBinary(t), "TETHER_HTTP_PUBLIC_URL=https://iot.example.com")
	p.args = []string{"--log-level", "info"}
	p.start(t)
	defer p.stop(t)
	var ready string
	checkFor(t, 10*time.Second, func() error {
		for _, line := range strings.Split(p.log(), "\n") {
			if strings.Contains(line, "tether ready") {
				ready = line
				return nil
			}
		}
		return errString("no start-up line yet")
	})
	for _, want := range []string{"open https://iot.example.com/", "http=http://" + p.http + "/", "mqtt=tcp://" + p.mqtt} {
		if !strings.Contains(ready, want) {
			t.Errorf("start-up line lacks %q: %s", want, ready)
		}
	}
	if strings.Contains(ready, "open http://") {
		t.Errorf("start-up line sends people to the listen address: %s", ready)
	}
}
