package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/tether-iot/tether/simulator"
)

// runSim runs a simulated device fleet against a broker (SPEC §8) and
// prints a JSON summary as the last line of stdout.
func runSim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sim", "sim [flags]", stderr)
	broker := fs.String("broker", "", "broker URL, e.g. tcp://127.0.0.1:1883 or ws://127.0.0.1:8080/mqtt (default: where --server says its broker listens, else 127.0.0.1 on the transport's port)")
	transport := fs.String("transport", "", "tcp, tls, ws or wss (default: the --broker scheme, else tcp)")
	server := fs.String("server", os.Getenv("TETHER_SERVER"), "Tether API URL to register the devices through, e.g. http://127.0.0.1:8080 (or TETHER_SERVER)")
	token := fs.String("token", os.Getenv("TETHER_TOKEN"), "API token for --server (or TETHER_TOKEN, or the saved login of tether login)")
	creds := fs.String("creds", "", "credentials file of the devices: JSON lines or a JSON array of {\"id\",\"secret\"}")
	credsOut := fs.String("creds-out", "", "write the credentials of devices registered through --server to this file (mode 0600)")
	devices := fs.Int("devices", 0, "number of devices (default 10, or every device in --creds)")
	prefix := fs.String("prefix", "", "device id prefix for registered devices (default sim-XXXX- with a random XXXX)")
	profile := fs.String("profile", "", "fleet file (YAML) or the name of a built-in profile: thermostat, power-meter, gps-tracker (default: all three)")
	interval := durationFlag(fs, "interval", 0, "telemetry period of every device (default: each profile's)")
	jitter := fs.Float64("jitter", 0.1, "± share by which each wait varies, 0..1 (0: exact periods)")
	qos := fs.Uint("qos", 0, "telemetry QoS: 0, 1 or 2")
	duration := durationFlag(fs, "duration", 0, "how long to run, e.g. 10m or 1d (0: until interrupted)")
	clean := fs.Bool("clean", false, "use clean sessions instead of persistent ones")
	churn := fs.Float64("churn", 0, "share of the fleet dropping off abruptly per minute, e.g. 0.05")
	churnDown := durationFlag(fs, "churn-downtime", 0, "how long a churned device stays away (default 30s)")
	conc := fs.Int("connect-concurrency", 32, "connects in flight at once")
	every := durationFlag(fs, "progress", 0, "progress line period on stderr, at least 100ms (default 5s; negative: none)")
	ca := fs.String("ca", "", "PEM file of the CA that signed the broker's certificate (tls, wss) and an https --server's (refused with neither)")
	insecure := fs.Bool("insecure-skip-verify", false, "do not verify the TLS certificates of the broker and an https --server (development only)")
	allowRemote := fs.Bool("allow-remote", false, "allow a broker that is not on a loopback address")
	seed := fs.Uint64("seed", 0, "random seed (default: random)")
	verbose := fs.Bool("verbose", false, "log each device's connect failures and odd messages to stderr")
	cleanup := fs.Bool("cleanup", false, "delete the devices registered through --server when the run ends")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// Every flag is checked before anything is printed or connected.
	if err := refuseZero(fs, map[string]string{
		"devices": "at least 1", "interval": "a period of at least 10ms", "churn-downtime": "a positive duration",
		"connect-concurrency": "at least 1", "progress": "a period of at least 100ms, or a negative one for none",
	}); err != nil {
		return err
	}
	if *server != "" && *token == "" {
		*token = savedToken(*server) // the login of tether login, for that server only
	}
	if *qos > 2 {
		return fmt.Errorf("--qos: %d is not 0, 1 or 2", *qos)
	}
	if _, err := simulator.ParseEndpoint(*broker, *transport, ""); err != nil {
		return err
	}
	tlsOpts := simulator.TLSOptions{CAFile: *ca, InsecureSkipVerify: *insecure}
	api, err := tlsOpts.HTTPClient(60 * time.Second) // an https --server trusts what the broker's connections trust
	if err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	fleet, err := simulator.LoadFleet(*profile)
	if err != nil {
		return err
	}
	cfg := simulator.SimConfig{
		AllowRemote: *allowRemote,
		TLS:         tlsOpts,
		Fleet:       fleet, Devices: *devices, Prefix: *prefix,
		Interval: *interval, Jitter: *jitter, NoJitter: *jitter == 0, QoS: byte(*qos), Duration: *duration,
		CleanSession: *clean, Churn: *churn, ChurnDowntime: *churnDown,
		ConnectConcurrency: *conc, Progress: *every, Seed: *seed,
	}
	if *creds != "" {
		if cfg.Credentials, err = simulator.LoadCredentials(*creds); err != nil {
			return err
		}
	} else if cfg.Devices == 0 {
		cfg.Devices = 10
	}
	if err := cfg.Validate(); err != nil {
		return err
	}

	raw := *broker
	if raw == "" && *server != "" {
		// Ask the server where its broker listens: its MQTT port need not
		// be the default one.
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		found, err := simulator.DiscoverBroker(dctx, *server, *token, *transport, api)
		cancel()
		if err != nil {
			raw = simulator.BrokerFromServer(*server, *transport)
			fmt.Fprintf(stderr, "sim: %v; trying %s\n", err, orDefault(raw, "127.0.0.1"))
		} else {
			raw = found
		}
	}
	if cfg.Endpoint, err = simulator.ParseEndpoint(raw, *transport, ""); err != nil {
		return err
	}
	ep := cfg.Endpoint
	if err := ep.CheckLoopback(*allowRemote); err != nil {
		return err
	}
	if err := checkTLSFlags(ep, *ca, *insecure, strings.HasPrefix(strings.ToLower(*server), "https://")); err != nil {
		return err
	}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	switch {
	case *creds != "":
	case *server != "":
		prov := &simulator.Provisioner{Server: *server, Token: *token, Client: api}
		cfg.Provisioner = prov
		if *cleanup {
			defer func() {
				// Also after Ctrl-C: the run's context is over by then.
				cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				ids := prov.Registered()
				n, err := prov.Remove(cctx, ids)
				if err != nil {
					fmt.Fprintf(stderr, "sim: cleanup: deleted %d of %d devices: %v\n", n, len(ids), err)
					return
				}
				fmt.Fprintf(stderr, "sim: cleanup: deleted the %d devices registered\n", n)
			}()
		}
		if *credsOut != "" {
			f, err := os.OpenFile(*credsOut, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return fmt.Errorf("open --creds-out: %w", err)
			}
			defer f.Close()
			cfg.CredsOut = f
		}
	default:
		fmt.Fprintln(stderr, "sim: no --creds or --server: devices connect without a password (for brokers that allow anonymous clients)")
	}

	if *cleanup && cfg.Provisioner == nil {
		fmt.Fprintln(stderr, "sim: --cleanup deletes devices registered through --server; with --creds there are none")
	}
	n := cfg.Devices
	if n == 0 {
		n = len(cfg.Credentials)
	}
	fmt.Fprintf(stderr, "sim: %d devices connect to %s\n", n, ep.URL())
	sum, err := simulator.RunSim(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	if err := json.NewEncoder(stdout).Encode(sum); err != nil {
		return err
	}
	if sum.Connects == 0 && sum.Devices > 0 {
		why := "no error before the end of the run (is --duration long enough?)"
		if len(sum.Errors) > 0 {
			why = strings.Join(sum.Errors, "; ")
		}
		return fmt.Errorf("no device connected to %s: %s", ep.URL(), why)
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
