package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/internal/testlog"
	"github.com/tether-iot/tether/internal/testmqtt"
	"github.com/tether-iot/tether/simulator"
)

// runSimAsync runs `tether sim` until ctx ends, collecting its output.
func runSimAsync(ctx context.Context, args []string) (done chan error, stdout, stderr *testlog.Buffer) {
	done = make(chan error, 1)
	stdout, stderr = &testlog.Buffer{}, &testlog.Buffer{}
	go func() { done <- runSim(ctx, args, stdout, stderr) }()
	return done, stdout, stderr
}

// TestSimFindsTheBroker: without --broker, `tether sim` asks the server
// where its broker listens (not the default :1883), says so, connects the
// fleet there, and with --cleanup deletes what it registered.
func TestSimFindsTheBroker(t *testing.T) {
	a := startAuthApp(t)
	api := login(t, a, "admin", simAdminPassword)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, stdout, stderr := runSimAsync(ctx, []string{
		"--server", "http://" + a.httpAddr(), "--token", api.token, "--devices", "3", "--prefix", "e2e-find-",
		"--interval", "1s", "--progress", "-1s", "--cleanup",
	})
	checkFor(t, 30*time.Second, func() error {
		select {
		case err := <-done:
			t.Fatalf("sim ended: %v\n%s", err, stderr.String())
		default:
		}
		online, err := api.devicesWithPrefix(t, "e2e-find-", "online")
		if err != nil || len(online) != 3 {
			return fmt.Errorf("online: %d, %v; stderr %s", len(online), err, stderr.String())
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("sim: %v\n%s", err, stderr.String())
	}
	if want := "3 devices connect to tcp://" + a.mqttAddr(); !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
	}
	var sum simulator.Summary
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil || sum.Connects < 3 {
		t.Errorf("summary %+v, %v", sum, err)
	}
	if left, err := api.devicesWithPrefix(t, "e2e-find-", ""); err != nil || len(left) != 0 {
		t.Errorf("after --cleanup: %d devices left, %v\n%s", len(left), err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "cleanup: deleted the 3 devices") {
		t.Errorf("stderr does not report the cleanup:\n%s", stderr.String())
	}
}

// TestSimHTTPSServer: --ca (or --insecure-skip-verify) is trusted for an
// https --server too, not only for the broker: against `tether certs
// dev`'s certificate on Tether's own HTTPS port, sim registers its
// devices there and connects them (the API refused them before:
// "certificate signed by unknown authority").
func TestSimHTTPSServer(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
	cfg := testConfig(t)
	cfg.Auth.AllowAnonymous = false
	cfg.TLS.Cert, cfg.TLS.Key, _ = deployCerts(t, t.TempDir())
	a := startTestApp(t, cfg)
	api := login(t, a, "admin", simAdminPassword)
	server := "https://localhost:" + port(a.httpsAddr())
	for _, trust := range [][]string{{"--ca", cfg.TLS.Cert}, {"--insecure-skip-verify"}} {
		prefix := nextID("e2e-https") + "-"
		var stdout, stderr testlog.Buffer
		err := runSim(context.Background(), append([]string{"--server", server, "--token", api.token, "--devices", "2",
			"--prefix", prefix, "--duration", "2s", "--progress", "-1s", "--cleanup"}, trust...), &stdout, &stderr)
		if err != nil {
			t.Fatalf("sim %v against %s: %v\n%s", trust, server, err, stderr.String())
		}
		if want := "2 devices connect to tcp://" + a.mqttAddr(); !strings.Contains(stderr.String(), want) {
			t.Errorf("sim %v: stderr lacks %q (the broker found through the API):\n%s", trust, want, stderr.String())
		}
		if !strings.Contains(stderr.String(), "cleanup: deleted the 2 devices") {
			t.Errorf("sim %v: stderr does not report the cleanup:\n%s", trust, stderr.String())
		}
	}
}

// TestSimNoDeviceConnects: a fleet that never connects exits non-zero,
// shows the first error of each kind once, and --cleanup still deletes
// the devices it registered.
func TestSimNoDeviceConnects(t *testing.T) {
	a := startAuthApp(t)
	api := login(t, a, "admin", simAdminPassword)
	closed := freeAddr(t) // nothing listens there
	var stdout, stderr bytes.Buffer
	err := runSim(context.Background(), []string{
		"--broker", "tcp://" + closed, "--server", "http://" + a.httpAddr(), "--token", api.token,
		"--devices", "4", "--prefix", "e2e-none-", "--duration", "3s", "--progress", "-1s", "--cleanup",
	}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "no device connected to tcp://"+closed) {
		t.Fatalf("sim: %v, want no device connected\n%s", err, stderr.String())
	}
	t.Logf("sim: %v\n%s", err, stderr.String())
	// Refused at once on loopback: every device fails the same way.
	if n := strings.Count(stderr.String(), "first connect error"); n != 1 {
		t.Errorf("%d first-error lines for one kind:\n%s", n, stderr.String())
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %v does not say why", err)
	}
	if left, err := api.devicesWithPrefix(t, "e2e-none-", ""); err != nil || len(left) != 0 {
		t.Errorf("after --cleanup: %d devices left, %v\n%s", len(left), err, stderr.String())
	}
}

// TestBenchSaysWhy: bench clients the broker refuses fail with the
// broker's reason, not only a count.
func TestBenchSaysWhy(t *testing.T) {
	a := startAuthApp(t)
	var stdout, stderr bytes.Buffer
	err := runBench(context.Background(), []string{
		"--broker", "tcp://" + a.mqttAddr(), "--username", "admin", "--password", "wrong-password",
		"--scenario", "conns", "--conns", "3", "--duration", "1s", "--progress", "-1s",
	}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "all 3 connections failed: connect: ") {
		t.Fatalf("bench: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(strings.ToLower(err.Error()), "bad user name or password") && !strings.Contains(strings.ToLower(err.Error()), "not authorized") {
		t.Errorf("bench error %v does not give the broker's reason", err)
	}
	if n := strings.Count(stderr.String(), "bench: first connect error"); n != 1 {
		t.Errorf("%d first-error lines:\n%s", n, stderr.String())
	}
}

// TestBenchNamesPendingLimit: bench connections that Tether closes at
// accept for limits.max_pending_connections_per_ip (more connections from
// one address waiting for their CONNACK than it allows: what
// --connect-concurrency above 1,024 meets at the defaults) fail with an
// error that names the limit and how to raise it, not a bare EOF. Here
// idle connections from the bench's own address hold the limit's places.
func TestBenchNamesPendingLimit(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
	cfg := testConfig(t)
	cfg.Auth.AllowAnonymous = false
	cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = configs.Off, configs.Off
	cfg.MQTT.ConnectTimeout = 5 * time.Minute // the idle holders stay for the test
	cfg.Limits.MaxPendingConnectionsPerIP = 4
	a := startTestApp(t, cfg)
	for range 5 { // the fifth is refused: the four hold every place
		c, err := net.Dial("tcp", a.mqttAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	// /metrics from another address: the holders fill 127.0.0.1's places
	// on every listener.
	const refused = `tether_connections_limited_total{limit="max_pending_connections_per_ip"} `
	testmqtt.CheckFor(t, 20*time.Second, func() error {
		res, err := httpFrom("127.0.0.2").Get("http://" + a.httpAddr() + "/metrics")
		if err != nil {
			return err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, refused); ok && v != "0" {
				return nil
			}
		}
		return fmt.Errorf("no refusal counted yet")
	})
	var stdout, stderr bytes.Buffer
	err := runBench(context.Background(), []string{
		"--broker", "tcp://" + a.mqttAddr(), "--username", "admin", "--password", simAdminPassword,
		"--scenario", "conns", "--conns", "3", "--duration", "1s", "--progress", "-1s",
	}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "all 3 connections failed") {
		t.Fatalf("bench: %v\n%s", err, stderr.String())
	}
	for _, want := range []string{"limits.max_pending_connections_per_ip", "TETHER_LIMITS_MAX_PENDING_CONNECTIONS_PER_IP", "--connect-concurrency"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("bench error does not say %q: %v", want, err)
		}
	}
}
