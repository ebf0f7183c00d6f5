package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs `tether demo` as a process on loopback ports chosen by the
// kernel, logs in with the password it prints, waits for every simulated
// device to report telemetry through the API, then interrupts it and checks
// that it exits 0 and removes its data directory.
func TestDemo(t *testing.T) {
	cmd := exec.Command(tetherBinary(t), "demo", "--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0",
		"--devices", "6", "--interval", "200ms")
	cmd.Env = append(os.Environ(), "TETHER_ADMIN_PASSWORD=") // the demo picks one
	stdout, stdoutW := io.Pipe()
	cmd.Stdout = stdoutW
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		stdoutW.Close()
		exited <- err
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	// The banner, up to the CLI hint that ends it.
	banner := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "tether doctor") {
				break
			}
		}
		banner <- b.String()
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var text string
	select {
	case text = <-banner:
	case <-time.After(60 * time.Second):
		t.Fatalf("no banner after 60s; stderr: %s", stderr.String())
	}
	t.Logf("banner:\n%s", text)
	m := regexp.MustCompile(`dashboard\s+(http://\S+)/\s+user admin, password (\S+)`).FindStringSubmatch(text)
	dm := regexp.MustCompile(`data\s+(\S+)`).FindStringSubmatch(text)
	if m == nil || dm == nil {
		t.Fatalf("banner lacks the URL, the password or the data directory:\n%s", text)
	}
	base, password, dataDir := m[1], m[2], dm[1]
	t.Cleanup(func() { os.RemoveAll(dataDir) }) // when the test kills the demo
	if _, err := os.Stat(dataDir); err != nil {
		t.Fatalf("data directory: %v", err)
	}

	// The dashboard answers.
	res, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(strings.ToLower(string(page)), "<html") {
		t.Fatalf("GET /: %d %.100s", res.StatusCode, page)
	}

	// The printed password logs in, and every device reports telemetry.
	s := &apiSession{base: base, client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(s.client.CloseIdleConnections)
	var tok struct {
		Token string `json:"token"`
	}
	if code := s.do(t, "POST", "/auth/login", map[string]string{"username": "admin", "password": password}, &tok); code != http.StatusOK {
		t.Fatalf("login with the printed password: status %d", code)
	}
	s.token = tok.Token
	checkFor(t, 60*time.Second, func() error {
		var list struct {
			Devices []struct {
				ID         string         `json:"id"`
				Type       string         `json:"type"`
				LastValues map[string]any `json:"last_values"` // numbers and booleans
			} `json:"devices"`
		}
		if code := s.do(t, "GET", "/devices?q=demo-&limit=1000", nil, &list); code != http.StatusOK {
			return fmt.Errorf("GET /devices: status %d", code)
		}
		ds := list.Devices
		types := map[string]bool{}
		reporting := 0
		for _, d := range ds {
			types[d.Type] = true
			if len(d.LastValues) > 0 {
				reporting++
			}
		}
		if len(ds) != 6 || reporting != 6 || len(types) < 3 {
			return fmt.Errorf("%d devices, %d reporting, types %v", len(ds), reporting, types)
		}
		var tel struct {
			Points []struct {
				Values map[string]any `json:"values"`
			} `json:"points"`
		}
		if code := s.do(t, "GET", "/devices/"+ds[0].ID+"/telemetry?limit=10", nil, &tel); code != http.StatusOK || len(tel.Points) == 0 {
			return fmt.Errorf("telemetry of %s: status %d, %d points", ds[0].ID, code, len(tel.Points))
		}
		return nil
	})

	// Ctrl-C: exit 0, the data directory removed.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("demo exit: %v; stderr: %s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("demo still running 60s after SIGINT; stderr: %s", stderr.String())
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("data directory %s still there after exit (stat: %v)", dataDir, err)
	}
}

// TestDemoRefusals: the demo's start-up mistakes say what to change in
// the demo's own terms: a port in use names the demo's flag and free
// ports (not serve's TETHER_* variables or configuration file, which the
// demo does not read), and a listener the fleet needs cannot be off.
func TestDemoRefusals(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", "demo-test-password") // else the demo sets it in this process
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := busy.Addr().String()
	const free = "--http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0"
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"http port in use", []string{"--http-addr", inUse, "--mqtt-addr", "127.0.0.1:0"},
			[]string{"http listener on " + inUse + ": address already in use", "choose another address with --http-addr", free}},
		{"mqtt port in use", []string{"--http-addr", "127.0.0.1:0", "--mqtt-addr", inUse},
			[]string{"mqtt listener on " + inUse + ": address already in use", "choose another address with --mqtt-addr", free}},
		{"http off", []string{"--http-addr", "off", "--mqtt-addr", "127.0.0.1:0"},
			[]string{"--http-addr off: the demo needs this listener", "--http-addr 127.0.0.1:0"}},
		{"mqtt off", []string{"--http-addr", "127.0.0.1:0", "--mqtt-addr", "Off"},
			[]string{"--mqtt-addr off: the demo needs this listener", "--mqtt-addr 127.0.0.1:0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := tether(t, append([]string{"demo", "--devices", "1"}, tc.args...)...)
			if code != 1 || strings.Contains(out, "demo is running") {
				t.Fatalf("exit %d; stdout %q; stderr %q", code, out, errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q lacks %q", errs, w)
				}
			}
			for _, no := range []string{"TETHER_", "configuration file", "no Host"} {
				if strings.Contains(errs, no) {
					t.Errorf("stderr %q mentions %q", errs, no)
				}
			}
		})
	}
}
