package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/tether-iot/tether/simulator"
)

// runBench runs one load scenario against any MQTT broker (SPEC §8) and
// prints one JSON result line on stdout.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", "bench [flags]", stderr)
	broker := fs.String("broker", "tcp://127.0.0.1:1883", "broker URL: tcp://, tls://, ws://HOST:PORT/mqtt or wss://")
	transport := fs.String("transport", "", "tcp, tls, ws or wss (default: the --broker scheme)")
	username := fs.String("username", "", "MQTT username of every bench client")
	password := fs.String("password", "", "MQTT password of every bench client")
	scenario := fs.String("scenario", "fanin", "fanin (P publishers → 1 wildcard subscriber), fanout (1 → S), pairs (N pairs), conns (C idle connections)")
	qos := fs.Uint("qos", 0, "QoS of publishes and subscriptions: 0, 1 or 2")
	size := fs.Int("size", 64, "payload bytes (at least 20: send time, publisher, sequence)")
	duration := durationFlag(fs, "duration", 0, "publishing time; for conns, holding time (default 10s)")
	pubs := fs.Int("pubs", 0, "publishers; for pairs, the number of pairs (default 10; fanout 1)")
	subs := fs.Int("subs", 0, "subscribers (default 1; fanout 10; pairs: --pubs)")
	conns := fs.Int("conns", 1000, "connections for the conns scenario")
	rate := fs.Float64("rate", 0, "messages per second per publisher (0: as fast as --inflight allows)")
	inflight := fs.Int("inflight", 64, "unacknowledged publishes per publisher")
	topic := fs.String("topic", "bench", "topic prefix")
	pid := fs.Int("pid", 0, "broker process id, to report its resident memory from /proc")
	conc := fs.Int("connect-concurrency", 64, "connects in flight at once")
	drain := durationFlag(fs, "drain", 0, "longest wait for messages in flight after publishing stops (default 5s)")
	every := durationFlag(fs, "progress", 0, "progress line period on stderr, at least 100ms (default 2s; negative: none)")
	ca := fs.String("ca", "", "PEM file of the CA that signed the broker's certificate (tls, wss; refused for tcp, ws)")
	insecure := fs.Bool("insecure-skip-verify", false, "do not verify the broker's TLS certificate (development only)")
	allowRemote := fs.Bool("allow-remote", false, "allow a broker that is not on a loopback address")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// Every flag is checked before anything is printed or connected
	// (RunBench checks the ranges before it connects).
	if err := refuseZero(fs, map[string]string{
		"size": "at least 20 bytes", "duration": "a positive duration", "pubs": "at least 1", "subs": "at least 1",
		"conns": "at least 1", "inflight": "at least 1", "connect-concurrency": "at least 1", "drain": "a positive duration",
		"progress": "a period of at least 100ms, or a negative one for none", "topic": "a topic prefix",
	}); err != nil {
		return err
	}
	if *qos > 2 {
		return fmt.Errorf("--qos: %d is not 0, 1 or 2", *qos)
	}
	ep, err := simulator.ParseEndpoint(*broker, *transport, "")
	if err != nil {
		return err
	}
	if err := checkTLSFlags(ep, *ca, *insecure, false); err != nil {
		return err
	}
	res, err := simulator.RunBench(ctx, simulator.BenchConfig{
		Endpoint: ep, AllowRemote: *allowRemote,
		TLS:      simulator.TLSOptions{CAFile: *ca, InsecureSkipVerify: *insecure},
		Username: *username, Password: *password,
		Scenario: *scenario, QoS: byte(*qos), Size: *size, Duration: *duration,
		Pubs: *pubs, Subs: *subs, Conns: *conns, Rate: *rate, Inflight: *inflight,
		Topic: *topic, PID: *pid, ConnectConcurrency: *conc, Drain: *drain, Progress: *every,
	}, stderr)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(res)
}
