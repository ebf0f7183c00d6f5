package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const doctorAdminPassword = "doctor-admin-password-1"

// startDoctorApp starts the app with every listener on, a certificate made
// by makeCert (the development one when nil), and anonymous clients off.
// It returns the app and the certificate's file.
func startDoctorApp(t *testing.T, makeCert func() ([]byte, []byte, error)) (*app, string) {
	t.Helper()
	t.Setenv("TETHER_ADMIN_PASSWORD", doctorAdminPassword)
	cfg := testConfig(t)
	cfg.Auth.AllowAnonymous = false
	if makeCert == nil {
		makeCert = func() ([]byte, []byte, error) { return devCertificate(time.Hour) }
	}
	certPEM, keyPEM, err := makeCert()
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
	return startTestApp(t, cfg), cfg.TLS.Cert
}

// doctorRun runs `tether doctor args...` and returns its exit code and
// stdout; stderr is logged.
func doctorRun(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, append([]string{"doctor", "--timeout", "5s"}, args...), &out, &errb)
	t.Logf("tether doctor %s -> %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return code, out.String()
}

// wantLines fails unless out holds each of wants.
func wantLines(t *testing.T, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("report lacks %q", w)
		}
	}
}

func TestDoctorConnectsOverEveryTransport(t *testing.T) {
	a, cert := startDoctorApp(t, nil)
	creds := []string{"--username", "admin", "--password", doctorAdminPassword}
	for _, tc := range []struct {
		name, url string
		steps     []string
	}{
		{"tcp", "tcp://" + a.mqttAddr(), []string{"ok    TCP", "ok    MQTT"}},
		{"tls", "tls://" + a.tlsAddr(), []string{"ok    TCP", "ok    TLS", "verifies this chain", "ok    MQTT"}},
		{"mqtts", "mqtts://" + a.tlsAddr(), []string{"ok    TLS", "ok    MQTT"}},
		{"ws", "ws://" + a.httpAddr() + "/mqtt", []string{"ok    HTTP", `subprotocol "mqtt"`, "ok    MQTT"}},
		{"wss", "wss://" + a.httpsAddr() + "/mqtt", []string{"ok    TLS", "ok    HTTP", "ok    MQTT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{tc.url, "--cafile", cert}, creds...)
			code, out := doctorRun(t, args...)
			if code != 0 {
				t.Fatalf("exit %d, want 0", code)
			}
			wantLines(t, out, append(tc.steps, "ok    DNS", "every step passed")...)
			if strings.Contains(out, doctorAdminPassword) {
				t.Error("the report shows the password")
			}
		})
	}
	t.Run("mqtt 3.1.1", func(t *testing.T) {
		code, out := doctorRun(t, append([]string{"tcp://" + a.mqttAddr(), "--mqtt-version", "3.1.1"}, creds...)...)
		if code != 0 {
			t.Fatalf("exit %d, want 0", code)
		}
		wantLines(t, out, "MQTT 3.1.1")
	})
}

// TestDoctorExplainsFailures causes each failure for real and checks the
// failing step, the reason and the advice.
func TestDoctorExplainsFailures(t *testing.T) {
	a, cert := startDoctorApp(t, nil)
	creds := []string{"--username", "admin", "--password", doctorAdminPassword}
	// A port nothing listens on: bound, then released.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	_, mqttPort, _ := net.SplitHostPort(a.mqttAddr())
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"nothing listening", []string{"tcp://" + closed},
			[]string{"FAIL  TCP", "nothing is listening", "start the broker, or correct the port", "failed at the TCP step"}},
		{"http port as tcp", append([]string{"tcp://" + a.httpAddr()}, creds...),
			[]string{"ok    TCP", "FAIL  MQTT", "answered in HTTP", "use ws://"}},
		{"mqtt port as ws", []string{"ws://" + a.mqttAddr() + "/mqtt"},
			[]string{"FAIL  HTTP", "without an HTTP answer", "use tcp://"}},
		{"plain port as tls", []string{"tls://" + a.mqttAddr()},
			[]string{"FAIL  TLS", "try tcp://"}},
		{"http port as wss", []string{"wss://" + a.httpAddr() + "/mqtt"},
			[]string{"FAIL  TLS", "plain HTTP, not TLS", "use ws://"}},
		{"https port as tls", []string{"tls://" + a.httpsAddr(), "--cafile", cert},
			[]string{"ok    TLS", "FAIL  MQTT", "answered in HTTPS", "use wss://"}},
		{"self-signed without cafile", append([]string{"tls://localhost:" + mqttPortOf(a.tlsAddr())}, creds...),
			[]string{"FAIL  TLS", "not trusted", "self-signed", "pass --cafile", "failed at the TLS step"}},
		{"self-signed without cafile over wss", []string{"wss://" + a.httpsAddr() + "/mqtt"},
			[]string{"FAIL  TLS", "self-signed"}},
		{"bad password", []string{"tcp://" + a.mqttAddr(), "--username", "admin", "--password", "not-the-password"},
			[]string{"FAIL  MQTT", "CONNACK 0x86 bad user name or password", "check --username and --password"}},
		{"bad password 3.1.1", []string{"tcp://127.0.0.1:" + mqttPort, "--username", "admin", "--password", "nope", "--mqtt-version", "3.1.1"},
			[]string{"FAIL  MQTT", "CONNACK 0x05 not authorized", "a wrong user name or password"}},
		{"tls port as tcp", []string{"tcp://" + a.tlsAddr()},
			[]string{"FAIL  MQTT", "it is a TLS port", "use tls://"}},
		{"anonymous", []string{"ws://" + a.httpAddr() + "/mqtt"},
			[]string{"ok    HTTP", "FAIL  MQTT", "not authorized", "anonymous clients are not allowed"}},
		{"foreign origin", []string{"ws://" + a.httpAddr() + "/mqtt", "--origin", "http://evil.example"},
			[]string{"FAIL  HTTP", "403", "refused the Origin http://evil.example", "http.allowed_origins", "the server said:"}},
		{"wrong path", []string{"ws://" + a.httpAddr() + "/nope"},
			[]string{"FAIL  HTTP", "404", "/mqtt"}},
		{"unknown name", []string{"tcp://doctor-test.invalid:1883"},
			[]string{"FAIL  DNS", "failed at the DNS step"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := doctorRun(t, tc.args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			wantLines(t, out, tc.want...)
			if strings.Contains(out, "every step passed") {
				t.Error("report says every step passed")
			}
		})
	}
}

func mqttPortOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// TestDoctorCertificateProblems runs brokers whose certificate names
// another host, or has expired.
func TestDoctorCertificateProblems(t *testing.T) {
	t.Run("wrong name", func(t *testing.T) {
		a, cert := startDoctorApp(t, func() ([]byte, []byte, error) {
			return selfSignedCertificate(time.Now().Add(-time.Hour), time.Now().Add(time.Hour), []string{"broker.example"}, nil)
		})
		url := "tls://" + a.tlsAddr()
		code, out := doctorRun(t, url, "--cafile", cert, "--username", "admin", "--password", doctorAdminPassword)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		wantLines(t, out, "FAIL  TLS", `the certificate is for broker.example, not "127.0.0.1"`, "verifies this chain")
		// --insecure goes on, warns, and reaches the broker.
		code, out = doctorRun(t, url, "--insecure", "--username", "admin", "--password", doctorAdminPassword)
		if code != 0 {
			t.Errorf("--insecure: exit %d, want 0", code)
		}
		wantLines(t, out, "warn  TLS", "--insecure", "ok    MQTT")
	})
	t.Run("expired", func(t *testing.T) {
		a, cert := startDoctorApp(t, func() ([]byte, []byte, error) {
			return selfSignedCertificate(time.Now().Add(-72*time.Hour), time.Now().Add(-24*time.Hour), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
		})
		code, out := doctorRun(t, "wss://"+a.httpsAddr()+"/mqtt", "--cafile", cert)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		wantLines(t, out, "FAIL  TLS", "the certificate expired on", "renew")
	})
	t.Run("cafile of another authority", func(t *testing.T) {
		a, _ := startDoctorApp(t, nil)
		other, _, err := devCertificate(time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		otherFile := filepath.Join(t.TempDir(), "other.pem")
		if err := os.WriteFile(otherFile, other, 0o644); err != nil {
			t.Fatal(err)
		}
		code, out := doctorRun(t, "tls://"+a.tlsAddr(), "--cafile", otherFile)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		wantLines(t, out, "FAIL  TLS", "does not verify this chain", "does not hold the certificate that signed it")
	})
}

func TestDoctorUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"doctor", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	wantLines(t, out.String(), "Usage: tether doctor URL", "--cafile", "--insecure", "--username")
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"doctor"}, &out, &errb); code != 2 {
		t.Errorf("no URL: exit %d, want 2", code)
	}
	if code := run(context.Background(), []string{"doctor", "http://127.0.0.1:1"}, &out, &errb); code != 1 {
		t.Errorf("http URL: exit %d, want 1", code)
	}
	if !strings.Contains(errb.String(), "unknown scheme") {
		t.Errorf("http URL: stderr %q lacks the reason", errb.String())
	}
}
