package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/simulator"
)

// simFleet is the fleet of the end-to-end tests: fast telemetry and
// devices that answer every command, so that each check is deterministic.
const simFleet = `
profiles:
  - name: e2e-sensor
    type: e2e-sensor
    interval: 200ms
    labels: {suite: e2e}
    settings: {setpoint: 20}
    metrics:
      - {name: temperature, kind: random_walk, start: 20, step: 0.3, min: 5, max: 35, toward: setpoint, pull: 0.1}
      - {name: count, kind: counter, start: 0, step: 1, decimals: 0}
    commands:
      reboot_downtime: 1s
`

const simAdminPassword = "e2e-admin-password-1"

// startAuthApp starts the whole app with anonymous MQTT off and the first
// admin's password set the way TETHER_ADMIN_PASSWORD sets it.
func startAuthApp(t *testing.T) *app {
	t.Helper()
	t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
	cfg := testConfig(t)
	cfg.Auth.AllowAnonymous = false
	cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = configs.Off, configs.Off
	cfg.Telemetry.FlushInterval = 50 * time.Millisecond
	return startTestApp(t, cfg)
}

// apiSession is an HTTP API client logged in as one user.
type apiSession struct {
	base, token string
	client      *http.Client
}

// login logs in through POST /api/v1/auth/login.
func login(t *testing.T, a *app, user, password string) *apiSession {
	t.Helper()
	s := &apiSession{base: "http://" + a.httpAddr(), client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(s.client.CloseIdleConnections)
	var out struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if code := s.do(t, "POST", "/auth/login", map[string]string{"username": user, "password": password}, &out); code != http.StatusOK {
		t.Fatalf("login as %s: status %d", user, code)
	}
	if out.Token == "" || !out.ExpiresAt.After(time.Now()) {
		t.Fatalf("login as %s: token %q, expires_at %v", user, out.Token, out.ExpiresAt)
	}
	s.token = out.Token
	return s
}

// do sends a request to /api/v1+path and decodes a 2xx body into out. It
// returns the status; a transport error fails the test.
func (s *apiSession) do(t testing.TB, method, path string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.base+"/api/v1"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		t.Logf("%s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(data))
		return resp.StatusCode
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, data, err)
		}
	}
	return resp.StatusCode
}

// simDevice is the part of a device (SPEC §6) the tests look at.
type simDevice struct {
	ID         string             `json:"id"`
	Type       string             `json:"type"`
	Labels     map[string]string  `json:"labels"`
	Online     bool               `json:"online"`
	Transport  string             `json:"transport"`
	LastValues map[string]float64 `json:"last_values"`
}

// devicesWithPrefix lists the devices whose id starts with prefix,
// filtered by status ("online", "offline" or "").
func (s *apiSession) devicesWithPrefix(t testing.TB, prefix, status string) ([]simDevice, error) {
	t.Helper()
	q := url.Values{"limit": {"1000"}, "q": {prefix}}
	if status != "" {
		q.Set("status", status)
	}
	var out struct {
		Devices []simDevice `json:"devices"`
	}
	if code := s.do(t, "GET", "/devices?"+q.Encode(), nil, &out); code != http.StatusOK {
		return nil, fmt.Errorf("GET /devices: status %d", code)
	}
	var got []simDevice
	for _, d := range out.Devices {
		if strings.HasPrefix(d.ID, prefix) {
			got = append(got, d)
		}
	}
	return got, nil
}

// simCommand is a command record (SPEC §6).
type simCommand struct {
	ID     string         `json:"id"`
	Status string         `json:"status"`
	Result map[string]any `json:"result"`
	Error  string         `json:"error"`
}

// sendCommand sends a command and waits for its outcome (wait: true).
func (s *apiSession) sendCommand(t testing.TB, device, name string, params map[string]any) simCommand {
	t.Helper()
	var c simCommand
	body := map[string]any{"name": name, "params": params, "timeout": 10, "wait": true}
	if code := s.do(t, "POST", "/devices/"+device+"/commands", body, &c); code/100 != 2 {
		t.Errorf("send %s to %s: status %d", name, device, code)
	}
	return c
}

// simRun is a `tether sim` run in the background.
type simRun struct {
	cancel   context.CancelFunc
	finished chan struct{} // closed when the run has returned
	sum      simulator.Summary
	err      error
}

// startSim runs a fleet of n devices against a until stop: over tcp
// through the command's flags (the fleet file on disk), over ws through
// simulator.RunSim (in batches of 8, to cover several bulk calls). Devices
// are registered through the API with token.
func startSim(t *testing.T, a *app, transport, token, prefix string, n int) *simRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &simRun{cancel: cancel, finished: make(chan struct{})}
	server := "http://" + a.httpAddr()
	var run func() (simulator.Summary, error)
	switch transport {
	case "tcp":
		fleet := filepath.Join(t.TempDir(), "fleet.yaml")
		if err := os.WriteFile(fleet, []byte(simFleet), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{
			"--broker", "tcp://" + a.mqttAddr(), "--server", server, "--token", token,
			"--devices", fmt.Sprint(n), "--prefix", prefix, "--profile", fleet, "--qos", "1",
			"--progress", "-1s", "--seed", "7",
		}
		run = func() (simulator.Summary, error) {
			var stdout, stderr bytes.Buffer
			if err := runSim(ctx, args, &stdout, &stderr); err != nil {
				return simulator.Summary{}, fmt.Errorf("%w; stderr: %s", err, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
			var sum simulator.Summary
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
				return sum, fmt.Errorf("last line of output %q: %w", lines[len(lines)-1], err)
			}
			return sum, nil
		}
	case "ws":
		ep, err := simulator.ParseEndpoint(wsURL(a), "", "")
		if err != nil {
			t.Fatal(err)
		}
		fleet, err := simulator.ParseFleet(strings.NewReader(simFleet))
		if err != nil {
			t.Fatal(err)
		}
		cfg := simulator.SimConfig{
			Endpoint: ep, Fleet: fleet, Devices: n, Prefix: prefix, QoS: 1, Progress: -1, Seed: 7,
			Provisioner: &simulator.Provisioner{Server: server, Token: token, BatchSize: 8},
		}
		run = func() (simulator.Summary, error) { return simulator.RunSim(ctx, cfg, nil) }
	default:
		t.Fatalf("transport %q", transport)
	}
	go func() {
		defer close(r.finished)
		r.sum, r.err = run()
	}()
	t.Cleanup(func() {
		if _, err := r.stop(); err != nil {
			t.Logf("sim: %v", err)
		}
	})
	return r
}

// failed returns the run's error if it has ended on its own.
func (r *simRun) failed() error {
	select {
	case <-r.finished:
		if r.err != nil {
			return r.err
		}
		return fmt.Errorf("stopped before it was asked to: %+v", r.sum)
	default:
		return nil
	}
}

// stop ends the run and returns its summary.
func (r *simRun) stop() (simulator.Summary, error) {
	r.cancel()
	select {
	case <-r.finished:
		return r.sum, r.err
	case <-time.After(30 * time.Second):
		return simulator.Summary{}, fmt.Errorf("did not stop within 30s of cancel")
	}
}

// TestSimAgainstTether runs `tether sim` against the real app, logged in
// as admin, once over TCP (through the command's flags) and once over
// WebSocket (through simulator.RunSim): the fleet is registered through
// POST /devices/bulk, comes online, its telemetry is stored and its
// devices answer commands, report their twin and follow desired state.
func TestSimAgainstTether(t *testing.T) {
	const n = 20
	for _, transport := range []string{"tcp", "ws"} {
		t.Run(transport, func(t *testing.T) {
			a := startAuthApp(t)
			api := login(t, a, "admin", simAdminPassword)
			prefix := "e2e-" + transport + "-"
			sim := startSim(t, a, transport, api.token, prefix, n)

			// Registered in bulk with the profile's type and labels, and online
			// over the transport asked for.
			checkFor(t, 30*time.Second, func() error {
				if err := sim.failed(); err != nil {
					t.Fatalf("sim: %v", err)
				}
				online, err := api.devicesWithPrefix(t, prefix, "online")
				if err != nil {
					return err
				}
				if len(online) != n {
					return fmt.Errorf("%d of %d devices online", len(online), n)
				}
				return nil
			})
			all, err := api.devicesWithPrefix(t, prefix, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(all) != n {
				t.Fatalf("%d devices registered with prefix %s, want %d", len(all), prefix, n)
			}
			for _, d := range all {
				if d.Type != "e2e-sensor" || d.Labels["suite"] != "e2e" || d.Labels["simulator"] != "tether-sim" || d.Transport != transport {
					t.Errorf("device %s: type %q, labels %v, transport %q", d.ID, d.Type, d.Labels, d.Transport)
				}
			}

			// Telemetry is stored: history points and last values.
			first := prefix + "00001"
			checkFor(t, 15*time.Second, func() error {
				var out struct {
					Points []struct {
						TS     time.Time      `json:"ts"`
						Values map[string]any `json:"values"`
					} `json:"points"`
				}
				if code := api.do(t, "GET", "/devices/"+first+"/telemetry?limit=100", nil, &out); code != http.StatusOK {
					return fmt.Errorf("GET telemetry: status %d", code)
				}
				if len(out.Points) < 2 {
					return fmt.Errorf("%d telemetry points stored for %s", len(out.Points), first)
				}
				p := out.Points[len(out.Points)-1]
				if _, ok := p.Values["temperature"]; !ok || p.TS.IsZero() {
					return fmt.Errorf("point without temperature or ts: %+v", p)
				}
				return nil
			})
			checkFor(t, 10*time.Second, func() error {
				var d simDevice
				if code := api.do(t, "GET", "/devices/"+first, nil, &d); code != http.StatusOK {
					return fmt.Errorf("GET device: status %d", code)
				}
				if _, ok := d.LastValues["temperature"]; !ok {
					return fmt.Errorf("last_values of %s: %v", first, d.LastValues)
				}
				return nil
			})

			// Commands are answered: ping, and set, which updates the
			// reported twin.
			target := prefix + "00002"
			if c := api.sendCommand(t, target, "ping", nil); c.Status != "succeeded" || c.Result["pong"] != true {
				t.Errorf("ping %s: %+v", target, c)
			}
			if c := api.sendCommand(t, target, "set", map[string]any{"setpoint": 23}); c.Status != "succeeded" {
				t.Errorf("set %s: %+v", target, c)
			}
			if c := api.sendCommand(t, target, "self-destruct", nil); c.Status != "failed" || !strings.Contains(c.Error, "unknown command") {
				t.Errorf("unknown command to %s: %+v", target, c)
			}
			checkFor(t, 10*time.Second, func() error {
				var tw struct {
					Reported map[string]any `json:"reported"`
				}
				if code := api.do(t, "GET", "/devices/"+target+"/twin", nil, &tw); code != http.StatusOK {
					return fmt.Errorf("GET twin: status %d", code)
				}
				if tw.Reported["setpoint"] != float64(23) {
					return fmt.Errorf("reported twin of %s: %v", target, tw.Reported)
				}
				return nil
			})

			// Desired twin state is followed: the device reports it back,
			// which leaves no delta.
			follower := prefix + "00003"
			if code := api.do(t, "PATCH", "/devices/"+follower+"/twin", map[string]any{"desired": map[string]any{"setpoint": 18}}, nil); code != http.StatusOK {
				t.Errorf("PATCH twin of %s: status %d", follower, code)
			}
			checkFor(t, 10*time.Second, func() error {
				var tw struct {
					Reported map[string]any `json:"reported"`
					Delta    map[string]any `json:"delta"`
				}
				if code := api.do(t, "GET", "/devices/"+follower+"/twin", nil, &tw); code != http.StatusOK {
					return fmt.Errorf("GET twin: status %d", code)
				}
				if tw.Reported["setpoint"] != float64(18) || len(tw.Delta) != 0 {
					return fmt.Errorf("twin of %s: reported %v, delta %v", follower, tw.Reported, tw.Delta)
				}
				return nil
			})

			sum, err := sim.stop()
			if err != nil {
				t.Fatalf("sim: %v", err)
			}
			t.Logf("summary: %+v", sum)
			if sum.Devices != n || sum.Connects < n || sum.ConnectFailures != 0 || sum.PublishErrors != 0 ||
				sum.Published < n || sum.CommandsAnswered != 2 || sum.CommandsFailed != 1 || sum.TwinUpdates != 1 || sum.Transport != transport {
				t.Errorf("summary: %+v", sum)
			}
			// A clean disconnect takes every device offline.
			checkFor(t, 10*time.Second, func() error {
				online, err := api.devicesWithPrefix(t, prefix, "online")
				if err != nil {
					return err
				}
				if len(online) != 0 {
					return fmt.Errorf("%d devices still online after the sim stopped", len(online))
				}
				return nil
			})
		})
	}
}

// TestSimRefusedWithoutToken: provisioning needs an admin's credentials;
// the sim stops with the API's error and registers nothing.
func TestSimRefusedWithoutToken(t *testing.T) {
	a := startAuthApp(t)
	var stdout, stderr bytes.Buffer
	err := runSim(context.Background(), []string{
		"--broker", "tcp://" + a.mqttAddr(), "--server", "http://" + a.httpAddr(), "--token", "not-a-token",
		"--devices", "3", "--prefix", "e2e-denied-", "--duration", "1s", "--progress", "-1s",
	}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("sim with a bad token: %v (stdout %q)", err, stdout.String())
	}
	api := login(t, a, "admin", simAdminPassword)
	if got, err := api.devicesWithPrefix(t, "e2e-denied-", ""); err != nil || len(got) != 0 {
		t.Fatalf("devices registered without a valid token: %v, %v", got, err)
	}
}

// TestBenchAgainstTether runs `tether bench` against the real app with
// authentication on, as admin over MQTT: at QoS 1 and a moderate fixed
// rate, fanin and pairs deliver every message once.
func TestBenchAgainstTether(t *testing.T) {
	a := startAuthApp(t)
	for _, tc := range []struct {
		broker, scenario string
	}{
		{"tcp://" + a.mqttAddr(), "fanin"},
		{"tcp://" + a.mqttAddr(), "pairs"},
		{wsURL(a), "fanin"},
	} {
		t.Run(tc.scenario+"-"+tc.broker[:strings.Index(tc.broker, ":")], func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runBench(context.Background(), []string{
				"--broker", tc.broker, "--username", "admin", "--password", simAdminPassword,
				"--scenario", tc.scenario, "--qos", "1", "--pubs", "4", "--rate", "100",
				"--duration", "2s", "--drain", "10s", "--progress", "-1s",
			}, &stdout, &stderr)
			if err != nil {
				t.Fatalf("bench: %v; stderr: %s", err, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
			if len(lines) != 1 {
				t.Fatalf("bench printed %d lines, want one JSON line: %q", len(lines), stdout.String())
			}
			var res simulator.Result
			if err := json.Unmarshal([]byte(lines[0]), &res); err != nil {
				t.Fatalf("bench output %q: %v", lines[0], err)
			}
			t.Logf("%s", lines[0])
			// 4 publishers at 100/s for 2 s: some 800 messages.
			if res.Sent < 400 || res.PublishErrors != 0 || res.ConnectErrors != 0 {
				t.Errorf("sent %d, publish errors %d, connect errors %d", res.Sent, res.PublishErrors, res.ConnectErrors)
			}
			if res.Lost != 0 || res.Loss != 0 || res.Received != res.Expected || res.Expected != res.Sent {
				t.Errorf("QoS 1: sent %d, expected %d, received %d, lost %d (loss %g)", res.Sent, res.Expected, res.Received, res.Lost, res.Loss)
			}
			if res.QoS != 1 || res.Scenario != tc.scenario || res.LatencyMS.P99 <= 0 {
				t.Errorf("result: %+v", res)
			}
		})
	}
}

// TestBenchProfileTether is a measurement, not a check: it runs `tether
// bench` (the built binary, so that only the broker is in this process)
// against the app started in-process with its defaults, at QoS 1 (or
// PROFILE_QOS), for each scenario and mqtt.client_queue_size asked for,
// and logs each result line. Run it with a CPU profile of the broker's hot path:
//
//	TETHER_BENCH_PROFILE=1 go test -run TestBenchProfileTether -v \
//	    -cpuprofile /tmp/tether.cpu ./cmd/tether/
//	go tool pprof -top /tmp/tether.cpu
//
// PROFILE_SCENARIOS (default "fanin,pairs"), PROFILE_QUEUES (default
// "256"), PROFILE_INFLIGHT (mqtt.max_inflight, default 1024),
// PROFILE_BACKPRESSURE (mqtt.backpressure_wait, default 1s; 0: off),
// PROFILE_QOS (default 1), PROFILE_DURATION (default "5s"), PROFILE_PUBS
// (default 10), PROFILE_RATE (default 0: as fast as 64 unacknowledged publishes per
// publisher allow), PROFILE_ANON (default 1: anonymous, as
// scripts/bench-compare.sh runs it; 0: as admin), PROFILE_TRANSPORT
// (default "tcp"; "ws": MQTT over WebSocket on /mqtt).
func TestBenchProfileTether(t *testing.T) {
	if os.Getenv("TETHER_BENCH_PROFILE") == "" {
		t.Skip("set TETHER_BENCH_PROFILE=1 to run the profiling load")
	}
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return def
	}
	bin := tetherBinary(t)
	for _, queue := range strings.Split(env("PROFILE_QUEUES", "256"), ",") {
		for _, scenario := range strings.Split(env("PROFILE_SCENARIOS", "fanin,pairs"), ",") {
			t.Run(scenario+"-queue-"+queue, func(t *testing.T) {
				t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
				cfg := testConfig(t)
				cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = configs.Off, configs.Off
				cfg.Auth.AllowAnonymous = env("PROFILE_ANON", "1") == "1"
				if err := cfg.Set("mqtt.client_queue_size", queue); err != nil {
					t.Fatal(err)
				}
				if err := cfg.Set("mqtt.max_inflight", env("PROFILE_INFLIGHT", fmt.Sprint(cfg.MQTT.MaxInflight))); err != nil {
					t.Fatal(err)
				}
				if err := cfg.Set("mqtt.backpressure_wait", env("PROFILE_BACKPRESSURE", cfg.MQTT.BackpressureWait.String())); err != nil {
					t.Fatal(err)
				}
				a := startTestApp(t, cfg)
				url := "tcp://" + a.mqttAddr()
				if env("PROFILE_TRANSPORT", "tcp") == "ws" {
					url = "ws://" + a.httpAddr() + "/mqtt"
				}
				args := []string{"bench", "--broker", url, "--scenario", scenario, "--qos", env("PROFILE_QOS", "1"),
					"--pubs", env("PROFILE_PUBS", "10"), "--rate", env("PROFILE_RATE", "0"),
					"--duration", env("PROFILE_DURATION", "5s"), "--progress", "-1s", "--pid", fmt.Sprint(os.Getpid())}
				if !cfg.Auth.AllowAnonymous {
					args = append(args, "--username", "admin", "--password", simAdminPassword)
				}
				cmd := exec.Command(bin, args...)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("tether bench: %v; stderr: %s", err, stderr.String())
				}
				// Where the engine dropped messages: a full send queue
				// (client_queue_size) or a full inflight store (max_inflight).
				info := a.broker.Server.Info
				drops := fmt.Sprintf("queue_dropped=%d inflight_dropped=%d", atomic.LoadInt64(&info.MessagesDropped), atomic.LoadInt64(&info.InflightDropped))
				t.Logf("queue %s, inflight %d: %s %s", queue, cfg.MQTT.MaxInflight, drops, bytes.TrimSpace(out))
				fmt.Printf("PROFILE queue=%s inflight=%d backpressure=%s %s %s", queue, cfg.MQTT.MaxInflight, cfg.MQTT.BackpressureWait, drops, out)
			})
		}
	}
}
