package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tlsFailListener serves TLS with certPEM/keyPEM on 127.0.0.1 and, with
// clientAuth, asks every client for a certificate; maxVersion, if given,
// caps the TLS version. Handshakes run and the
// connection is read until the client goes: what fails is the handshake.
func tlsFailListener(t *testing.T, certPEM, keyPEM []byte, clientAuth tls.ClientAuthType, maxVersion ...uint16) string {
	t.Helper()
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: clientAuth}
	if len(maxVersion) > 0 {
		conf.MaxVersion = maxVersion[0]
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// doctorFailure runs doctor and returns its FAIL line's reason and its fix.
func doctorFailure(t *testing.T, args ...string) (why, fix string) {
	t.Helper()
	code, out := doctorRun(t, args...)
	if code != 1 {
		t.Errorf("doctor exit %d, want 1", code)
	}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, "  FAIL  TLS     "); ok {
			why = rest
			if i+1 < len(lines) {
				fix, _ = strings.CutPrefix(strings.TrimSpace(lines[i+1]), "fix: ")
			}
		}
	}
	if why == "" || fix == "" {
		t.Fatalf("doctor's report has no FAIL at the TLS step with a fix:\n%s", out)
	}
	return why, fix
}

// TestTLSFailuresReadTheSame: `tether doctor` and `tether bench`/`sim`,
// pointed at the same failing TLS endpoint over real sockets, say the
// same why and fix (one implementation: internal/tlsexplain). The
// simulator said "server does not speak TLS on this port? (EOF)" for a
// plain port and Go's bare "x509: certificate signed by unknown
// authority" for a self-signed certificate; doctor said more, and a
// server that wants a client certificate was, for doctor, "the broker
// closed the connection without answering CONNECT".
func TestTLSFailuresReadTheSame(t *testing.T) {
	a, _ := startDoctorApp(t, nil)
	devCert, devKey, err := devCertificate(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := devCertificate(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(otherFile, other, 0o644); err != nil {
		t.Fatal(err)
	}
	wrongCert, wrongKey, err := selfSignedCertificate(time.Now().Add(-time.Hour), time.Now().Add(time.Hour), []string{"broker.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	wrongFile := filepath.Join(t.TempDir(), "wrong.pem")
	if err := os.WriteFile(wrongFile, wrongCert, 0o644); err != nil {
		t.Fatal(err)
	}
	oldCert, oldKey, err := selfSignedCertificate(time.Now().Add(-72*time.Hour), time.Now().Add(-24*time.Hour), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	oldFile := filepath.Join(t.TempDir(), "old.pem")
	if err := os.WriteFile(oldFile, oldCert, 0o644); err != nil {
		t.Fatal(err)
	}
	devFile := filepath.Join(t.TempDir(), "dev.pem")
	if err := os.WriteFile(devFile, devCert, 0o644); err != nil {
		t.Fatal(err)
	}
	mutual := tlsFailListener(t, devCert, devKey, tls.RequireAnyClientCert)
	mutual12 := tlsFailListener(t, devCert, devKey, tls.RequireAnyClientCert, tls.VersionTLS12)
	wrongName := tlsFailListener(t, wrongCert, wrongKey, tls.NoClientCert)
	expired := tlsFailListener(t, oldCert, oldKey, tls.NoClientCert)

	for _, tc := range []struct {
		name, url, host string
		ca              string // --cafile for doctor, --ca for the simulator
		want            []string
	}{
		{"plain mqtt port", "tls://" + a.mqttAddr(), a.mqttAddr(), "",
			[]string{"the server closed the connection during the TLS handshake", "try tcp://"}},
		{"plain http port", "wss://" + a.httpAddr() + "/mqtt", a.httpAddr(), "",
			[]string{"the port answered with plain HTTP, not TLS", "use ws://"}},
		{"unknown authority", "tls://" + a.tlsAddr(), a.tlsAddr(), "",
			[]string{"the certificate is not trusted: it is self-signed", "pass --ca"}},
		{"ca of another authority", "tls://" + a.tlsAddr(), a.tlsAddr(), otherFile,
			[]string{"the certificate is not trusted", "does not hold the certificate that signed it"}},
		{"wrong name", "tls://" + wrongName, wrongName, wrongFile,
			[]string{`the certificate is for broker.example, not "127.0.0.1"`}},
		{"expired", "tls://" + expired, expired, oldFile,
			[]string{"the certificate expired on", "renew"}},
		{"client certificate required", "tls://" + mutual, mutual, devFile,
			[]string{"the server wants a client certificate", "mutual TLS"}},
		{"client certificate required over wss", "wss://" + mutual + "/mqtt", mutual, devFile,
			[]string{"the server wants a client certificate", "mutual TLS"}},
		{"client certificate required by TLS 1.2", "tls://" + mutual12, mutual12, devFile,
			// Go's TLS 1.2 server (OpenSSL's too) says only "handshake
			// failure", as for no common cipher: both causes are named.
			[]string{"remote error: tls: handshake failure", "or the server wants a client certificate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dargs := []string{tc.url}
			sargs := []string{"--broker", tc.url, "--duration", "1s", "--progress", "-1s"}
			if tc.ca != "" {
				dargs = append(dargs, "--cafile", tc.ca)
				sargs = append(sargs, "--ca", tc.ca)
			}
			why, fix := doctorFailure(t, dargs...)
			// The simulator names its own flags where doctor names --cafile
			// and --insecure; the rest is the same text.
			simFix := strings.NewReplacer("--cafile", "--ca", "--insecure", "--insecure-skip-verify").Replace(fix)
			wantSim := why + "; " + simFix
			for _, w := range tc.want {
				if !strings.Contains(why+"; "+fix, w) && !strings.Contains(wantSim, w) {
					t.Errorf("doctor: %q; fix: %q; want %q", why, fix, w)
				}
			}
			for _, cmd := range [][]string{{"bench"}, {"sim", "--devices", "1"}} {
				args := append(cmd, sargs...)
				var out, errb bytes.Buffer
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				code := run(ctx, args, &out, &errb)
				cancel()
				lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
				last := lines[len(lines)-1]
				if code == 0 || !strings.Contains(last, "tls handshake with "+tc.host+": "+wantSim) {
					t.Errorf("%s: exit %d, last line\n%s\nwant it to hold\ntls handshake with %s: %s", cmd[0], code, last, tc.host, wantSim)
				}
			}
		})
	}
}
