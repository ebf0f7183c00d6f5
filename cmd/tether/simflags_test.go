package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestSimBenchFlagErrors: every bad value of a sim or bench flag gets one
// clear line on stderr and a non-zero exit from the real binary, before
// anything else is printed and before the broker is connected to (a
// listener counts the connections). `sim --devices -3` printed two lines
// first; `bench --pubs 0`, `--inflight 0` ran with 10 and 64; `--ca` with
// a tcp:// broker was ignored; `--progress 1ns` flooded stderr.
func TestSimBenchFlagErrors(t *testing.T) {
	bin := tetherBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	tcp := "tcp://" + ln.Addr().String()
	ws := "ws://" + ln.Addr().String() + "/mqtt"
	ca, _, _ := deployCerts(t, t.TempDir())

	sim := func(a ...string) []string { return append([]string{"sim", "--broker", tcp}, a...) }
	bench := func(a ...string) []string { return append([]string{"bench", "--broker", tcp}, a...) }
	for _, tc := range []struct {
		args []string
		want string
	}{
		{sim("--devices", "-3"), "devices: -3 is outside 0..100000"},
		{sim("--devices", "0"), "--devices: 0 is not allowed: want at least 1"},
		{sim("--interval", "-1s"), "interval: -1s is outside 10ms..24h"},
		{sim("--interval", "0"), "--interval: 0 is not allowed"},
		{sim("--jitter", "NaN"), "jitter: NaN is outside 0..1"},
		{sim("--jitter", "Inf"), "jitter: +Inf is outside 0..1"},
		{sim("--jitter", "-0.5"), "jitter: -0.5 is outside 0..1"},
		{sim("--churn", "NaN"), "churn: NaN is outside 0..60"},
		{sim("--churn", "-1"), "churn: -1 is outside 0..60"},
		{sim("--churn-downtime", "-1s"), "churn downtime: -1s is outside 0..24h"},
		{sim("--churn-downtime", "0"), "--churn-downtime: 0 is not allowed"},
		{sim("--connect-concurrency", "0"), "--connect-concurrency: 0 is not allowed"},
		{sim("--connect-concurrency", "-1"), "connect concurrency: -1 is outside 1..10000"},
		{sim("--duration", "-1s"), "duration: must not be negative"},
		{sim("--progress", "0"), "--progress: 0 is not allowed"},
		{sim("--progress", "1ns"), "progress: 1ns is under 100ms"},
		{sim("--qos", "3"), "--qos: 3 is not 0, 1 or 2"},
		{sim("--prefix", "a/"), `prefix: "a/" makes the invalid device id`},
		{sim("--transport", "udp"), `unknown transport "udp"`},
		{sim("--ca", ca), "--ca is for TLS, and the broker " + tcp + " is plain tcp"},
		{sim("--insecure-skip-verify"), "--insecure-skip-verify is for TLS"},
		{[]string{"sim", "--broker", ws, "--ca", ca}, "--ca is for TLS, and the broker " + ws + " is plain ws"},
		{sim("--server", "http://"+ln.Addr().String(), "--ca", ca), "--ca is for TLS"},

		{bench("--pubs", "0"), "--pubs: 0 is not allowed: want at least 1"},
		{bench("--inflight", "0"), "--inflight: 0 is not allowed: want at least 1"},
		{bench("--subs", "0"), "--subs: 0 is not allowed"},
		{bench("--conns", "0"), "--conns: 0 is not allowed"},
		{bench("--size", "0"), "--size: 0 is not allowed"},
		{bench("--duration", "0"), "--duration: 0 is not allowed"},
		{bench("--drain", "0"), "--drain: 0 is not allowed"},
		{bench("--connect-concurrency", "0"), "--connect-concurrency: 0 is not allowed"},
		{bench("--progress", "0"), "--progress: 0 is not allowed"},
		{bench("--topic", ""), "--topic: empty is not allowed"},
		{bench("--pubs", "-1"), "pubs, subs: must be in 1..50000"},
		{bench("--inflight", "-1"), "inflight: -1 is outside 1..65000"},
		{bench("--size", "-5"), "size: -5 is outside"},
		{bench("--rate", "NaN"), "rate: NaN is neither 0"},
		{bench("--rate", "Inf"), "rate: +Inf is neither 0"},
		{bench("--rate", "-1"), "rate: -1 is neither 0"},
		{bench("--pid", "-5"), "pid: -5 is not a process id"},
		{bench("--duration", "-1s"), "duration: -1s is outside 0..24h"},
		{bench("--drain", "-1s"), "drain: -1s is outside 0..24h"},
		{bench("--progress", "1ns"), "progress: 1ns is under 100ms"},
		{bench("--topic", "a/#"), `topic: "a/#" holds a wildcard`},
		{bench("--qos", "3"), "--qos: 3 is not 0, 1 or 2"},
		{bench("--ca", ca), "--ca is for TLS, and the broker " + tcp + " is plain tcp"},
		{bench("--insecure-skip-verify"), "--insecure-skip-verify is for TLS"},
		{[]string{"bench", "--broker", ws, "--ca", ca}, "--ca is for TLS, and the broker " + ws + " is plain ws"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, bin, tc.args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Errorf("%q: %v, want a non-zero exit\n%s", tc.args, err, stderr.String())
			continue
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		if len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
			t.Errorf("%q: stderr\n%s\nwant only one line with %q", tc.args, stderr.String(), tc.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: stdout %q, want nothing", tc.args, stdout.String())
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections to the broker, want none", n)
	}
}

// TestSimBenchTLSToPlainPort: sim and bench with tls:// or wss:// pointed
// at Tether's plain MQTT and HTTP ports say that the server does not
// speak TLS there, as `tether doctor` does (they said only "EOF", or
// "first record does not look like a TLS handshake").
func TestSimBenchTLSToPlainPort(t *testing.T) {
	p := newTetherProc(t, tetherBinary(t))
	p.start(t)
	defer p.stop(t)
	for _, tc := range []struct {
		args      []string
		host, why string
	}{
		{[]string{"bench", "--broker", "tls://" + p.mqtt, "--insecure-skip-verify"}, p.mqtt, "the server closed the connection during the TLS handshake; the port may not speak TLS (try tcp://)"},
		{[]string{"bench", "--broker", "wss://" + p.http + "/mqtt", "--insecure-skip-verify"}, p.http, "the port answered with plain HTTP, not TLS; use ws:// for this port"},
		{[]string{"sim", "--broker", "tls://" + p.mqtt, "--insecure-skip-verify", "--devices", "1"}, p.mqtt, "the server closed the connection during the TLS handshake; the port may not speak TLS (try tcp://)"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, tetherBinary(t), append(tc.args, "--duration", "1s", "--progress", "-1s")...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		timedOut := ctx.Err() != nil
		cancel()
		if err == nil || timedOut {
			t.Errorf("%q: %v, want a prompt non-zero exit\n%s", tc.args, err, stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		want := "tls handshake with " + tc.host + ": " + tc.why
		if last := lines[len(lines)-1]; !strings.Contains(last, want) {
			t.Errorf("%q: last line\n%s\nwant %q", tc.args, last, want)
		}
	}
}
