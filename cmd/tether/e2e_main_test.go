package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestMain fails the package's tests if any goroutine outlives them, and
// removes the binary that tests of the real process build.
func TestMain(m *testing.M) {
	// tether login keeps its token under os.UserConfigDir: never the real one.
	cfgDir, _ := os.MkdirTemp("", "tether-config-")
	os.Setenv("XDG_CONFIG_HOME", cfgDir)
	code := m.Run()
	os.RemoveAll(cfgDir)
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		if err := goleak.Find(leakOptions...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

var leakOptions = []goleak.Option{
	// Idle keep-alive connections of http.DefaultTransport.
	goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
	// The signal package's, once any test uses signals.
	goleak.IgnoreTopFunction("os/signal.signal_recv"),
	goleak.IgnoreAnyFunction("os/signal.loop"),
}

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// tetherBinary builds cmd/tether once per test binary and returns its path.
func tetherBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "tether-bin-"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "tether")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// testLogger discards the app's log unless TETHER_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("TETHER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testConfig is a configuration on loopback ports chosen by the kernel,
// with anonymous clients allowed and TLS off.
func testConfig(t testing.TB) configs.Config {
	cfg := configs.Default()
	cfg.DataDir = t.TempDir()
	cfg.MQTT.Addr = "127.0.0.1:0"
	cfg.MQTT.TLSAddr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.HTTP.HTTPSAddr = "127.0.0.1:0"
	cfg.MQTT.ShutdownGrace = 5 * time.Second
	cfg.Auth.AllowAnonymous = true
	return cfg
}

// startTestApp starts the app in-process; the test's cleanup stops it.
func startTestApp(t testing.TB, cfg configs.Config) *app {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test configuration: %v", err)
	}
	a, err := startApp(cfg, testLogger())
	if err != nil {
		t.Fatalf("startApp: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return a
}

// withTLS writes a development certificate into a temporary directory and
// configures the app to use it.
func withTLS(t testing.TB, cfg *configs.Config) (certFile string) {
	t.Helper()
	certPEM, keyPEM, err := devCertificate(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg.TLS.Cert, cfg.TLS.Key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cfg.TLS.Cert, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.TLS.Key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg.TLS.Cert
}

// checkFor polls cond until it returns nil or d has passed
// (testmqtt.CheckFor).
func checkFor(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	testmqtt.CheckFor(t, d, cond)
}

// wsURL is the app's MQTT-over-WebSocket URL.
func wsURL(a *app) string { return "ws://" + a.httpAddr() + "/mqtt" }

// dialTCP opens a raw TCP connection to the MQTT listener.
func dialTCP(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// inCI reports whether missing tools must fail tests rather than skip them.
func inCI() bool { return os.Getenv("CI") == "true" }

// requireTool skips (or, in CI, fails) when a tool the test needs is absent.
func requireTool(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if inCI() {
		t.Fatalf("%s is required in CI: %v", what, err)
	}
	t.Skipf("%s not available: %v", what, err)
}
