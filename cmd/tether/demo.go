package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/simulator"
)

// runDemo starts the broker, the dashboard and a simulated fleet of mixed
// profiles in a temporary data directory (SPEC §8: `tether demo`), prints
// where to look and how to log in, and removes the directory on exit.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "demo [flags]\n\n"+
		"Starts the broker, the dashboard and a simulated fleet (thermostats, power meters,\n"+
		"GPS trackers) in a temporary data directory, prints the dashboard's URL and the\n"+
		"admin password, and removes everything on Ctrl-C.", stderr)
	httpAddr := fs.String("http-addr", "127.0.0.1:8080", "HTTP address: dashboard, API and MQTT over WebSocket at /mqtt")
	mqttAddr := fs.String("mqtt-addr", "127.0.0.1:1883", "MQTT over TCP address")
	n := fs.Int("devices", 12, "number of simulated devices")
	profile := fs.String("profile", "", "fleet file (YAML) or a built-in profile name (default: all three built-in profiles)")
	interval := durationFlag(fs, "interval", 0, "telemetry period of every device (default: each profile's, 5 to 15 s)")
	logLevel := fs.String("log-level", "warn", "server log level on stderr: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tether demo: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	if *n < 1 || *n > 10000 {
		return fmt.Errorf("--devices %d: want 1 to 10000", *n)
	}
	// The fleet registers through the API and connects over MQTT TCP:
	// the demo cannot run without either listener.
	for _, l := range []struct{ flag, addr, why string }{
		{"--http-addr", *httpAddr, "the dashboard, and the API the simulated fleet registers through"},
		{"--mqtt-addr", *mqttAddr, "the simulated fleet connects over MQTT TCP"},
	} {
		if strings.EqualFold(strings.TrimSpace(l.addr), configs.Off) {
			return fmt.Errorf("%s off: the demo needs this listener (%s); give an address, e.g. %s 127.0.0.1:0 for a free port", l.flag, l.why, l.flag)
		}
	}
	fleet, err := simulator.LoadFleet(*profile)
	if err != nil {
		return err
	}

	dir, err := os.MkdirTemp("", "tether-demo-")
	if err != nil {
		return fmt.Errorf("demo: temporary data directory: %w", err)
	}
	defer os.RemoveAll(dir)
	cfg := configs.Default()
	cfg.DataDir = dir
	cfg.MQTT.Addr, cfg.HTTP.Addr = *mqttAddr, *httpAddr
	cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = configs.Off, configs.Off
	cfg.Log.Level = *logLevel
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid demo configuration:\n%w", err)
	}
	// The first admin's password, chosen here to be printed below, goes
	// the way a user sets it: TETHER_ADMIN_PASSWORD (unless already set).
	password := os.Getenv("TETHER_ADMIN_PASSWORD")
	if password == "" {
		password = demoPassword()
		os.Setenv("TETHER_ADMIN_PASSWORD", password)
	}
	log := newLogger(cfg.Log, stderr)
	a, err := startApp(cfg, log)
	if le := (*listenerError)(nil); errors.As(err, &le) {
		// The demo's own advice: it has neither the TETHER_* listener
		// variables nor a configuration file, only these two flags.
		return demoListenError(le)
	}
	if err != nil {
		return err
	}
	server := "http://" + a.httpAddr()
	stop := func() error {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.MQTT.ShutdownGrace)
		defer cancel()
		return a.shutdown(sctx)
	}
	// The simulator registers its devices through the API, like any client.
	token, _, err := a.registry.CreateToken(ctx, devices.AdminUser, "demo fleet", 24*time.Hour)
	if err != nil {
		return errors.Join(fmt.Errorf("demo: token for the fleet: %w", err), stop())
	}
	ep, err := simulator.ParseEndpoint("tcp://"+a.mqttAddr(), "", "")
	if err != nil {
		return errors.Join(err, stop())
	}
	simCtx, cancelSim := context.WithCancel(ctx)
	defer cancelSim()
	simDone := make(chan error, 1)
	go func() {
		_, err := simulator.RunSim(simCtx, simulator.SimConfig{
			Endpoint: ep, Fleet: fleet, Devices: *n, Prefix: "demo-", Interval: *interval, Jitter: 0.1, QoS: 1,
			Provisioner: &simulator.Provisioner{Server: server, Token: token},
			Progress:    -1,
		}, io.Discard)
		simDone <- err
	}()

	names := make([]string, 0, len(fleet.Profiles))
	for _, p := range fleet.Profiles {
		names = append(names, p.Name)
	}
	fmt.Fprintf(stdout, "Tether demo is running. Press Ctrl-C to stop; it then removes %s.\n\n", dir)
	fmt.Fprintf(stdout, "  dashboard  %s/   user admin, password %s\n", server, password)
	fmt.Fprintf(stdout, "  MQTT       tcp://%s   ws://%s/mqtt\n", a.mqttAddr(), a.httpAddr())
	fmt.Fprintf(stdout, "  fleet      %d simulated devices (%s), ids demo-*\n", *n, strings.Join(names, ", "))
	fmt.Fprintf(stdout, "  data       %s\n\n", dir)
	fmt.Fprintf(stdout, "Try the CLI in another terminal:\n")
	fmt.Fprintf(stdout, "  export TETHER_SERVER=%s TETHER_TOKEN=%s\n", server, token)
	fmt.Fprintf(stdout, "  tether devices list\n")
	fmt.Fprintf(stdout, "  tether doctor tcp://%s --username admin --password %s\n", a.mqttAddr(), password)

	var failed error
	select {
	case <-ctx.Done():
	case err := <-simDone: // the fleet stopped on its own
		simDone = nil
		if err != nil {
			failed = fmt.Errorf("demo fleet: %w", err)
		}
	case failed = <-a.failed:
	}
	fmt.Fprintln(stderr, "tether demo: stopping")
	cancelSim()
	if simDone != nil {
		<-simDone // stopped by cancelSim: how it ended does not matter
	}
	return errors.Join(failed, stop())
}

// demoListenError explains a listener of the demo's that could not bind
// with what moves it: its flag (the demo reads no TETHER_* listener
// variable and no configuration file).
func demoListenError(le *listenerError) error {
	flagName := map[string]string{"http.addr": "--http-addr", "mqtt.addr": "--mqtt-addr"}[le.key]
	if flagName == "" { // not one of the demo's listeners: serve's words
		return le
	}
	return &demoListenerError{le, fmt.Sprintf("%s listener on %s: %s: choose another address with %s, "+
		"or free ports for both with --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0",
		le.what, le.addr, le.reason(), flagName)}
}

// demoListenerError is a listenerError in the demo's words.
type demoListenerError struct {
	*listenerError
	msg string
}

func (e *demoListenerError) Error() string { return e.msg }

// demoPassword is a random password (26 base32 characters).
func demoPassword() string { return rand.Text() }
