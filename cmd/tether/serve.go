package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/listeners/forwarded"
)

// serveFlags maps each `tether serve` flag to its configuration key.
var serveFlags = []struct{ flag, key, usage string }{
	{"data-dir", "data_dir", "directory of the SQLite database (TETHER_DATA_DIR)"},
	{"mqtt-addr", "mqtt.addr", "MQTT over TCP address, or off (TETHER_MQTT_ADDR)"},
	{"http-addr", "http.addr", "HTTP address: dashboard, API, /mqtt, /metrics; or off (TETHER_HTTP_ADDR)"},
	{"tls-addr", "mqtt.tls_addr", "MQTT over TLS address, or off (TETHER_TLS_ADDR)"},
	{"https-addr", "http.https_addr", "HTTPS/WSS address, or off (TETHER_HTTPS_ADDR)"},
	{"tls-cert", "tls.cert", "PEM certificate for TLS and HTTPS (TETHER_TLS_CERT)"},
	{"tls-key", "tls.key", "PEM private key for TLS and HTTPS (TETHER_TLS_KEY)"},
	{"log-level", "log.level", "debug, info, warn or error (TETHER_LOG_LEVEL)"},
	{"log-format", "log.format", "text or json (TETHER_LOG_FORMAT)"},
	{"postgres", "storage.postgres_url", "PostgreSQL URL: registry, users, tokens, commands, twins, telemetry there instead of SQLite (TETHER_STORAGE_POSTGRES_URL)"},
	{"node", "cluster.node", "this node's name in a cluster; empty: the host name (TETHER_CLUSTER_NODE)"},
	{"cluster-listen", "cluster.listen", "embedded NATS route address HOST:PORT; joins a cluster (TETHER_CLUSTER_LISTEN)"},
	{"cluster-peers", "cluster.peers", "other nodes' route addresses HOST:PORT,... (TETHER_CLUSTER_PEERS)"},
	{"nats-url", "cluster.nats_url", "external NATS URL instead of the embedded one (TETHER_CLUSTER_NATS_URL)"},
}

// loadConfig layers defaults, the file, the environment and the flags.
func loadConfig(args []string, stderr io.Writer, lookup func(string) (string, bool)) (configs.Config, error) {
	fs := newFlagSet("serve", "serve [-c FILE] [flags]", stderr)
	file := fs.String("c", "", "YAML configuration file (see configs/tether.yaml)")
	set := map[string]*string{}
	defaults := configs.Default()
	for _, f := range serveFlags {
		// The default shown by --help; only flags given on the command
		// line override the file and the environment (fs.Visit below).
		def, _ := defaults.Get(f.key)
		set[f.key] = fs.String(f.flag, def, f.usage)
	}
	anon := fs.Bool("allow-anonymous", false, "let MQTT clients in without credentials (TETHER_ALLOW_ANONYMOUS=true)")
	if err := parseFlags(fs, args); err != nil {
		return configs.Config{}, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tether serve: unexpected argument %q\n", fs.Arg(0))
		return configs.Config{}, errUsage
	}
	cfg := configs.Default()
	if *file != "" {
		var err error
		if cfg, err = configs.ParseFile(*file); err != nil {
			return cfg, err
		}
	}
	if err := cfg.ApplyEnv(lookup); err != nil {
		return cfg, fmt.Errorf("environment: %w", err)
	}
	var ferr error
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "c" || f.Name == "allow-anonymous" {
			return
		}
		for _, sf := range serveFlags {
			if sf.flag == f.Name {
				if err := cfg.Set(sf.key, *set[sf.key]); err != nil && ferr == nil {
					ferr = fmt.Errorf("--%s: %w", f.Name, err)
				}
			}
		}
	})
	if ferr != nil {
		return cfg, ferr
	}
	if flagGiven(fs, "allow-anonymous") {
		cfg.Auth.AllowAnonymous = *anon
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

func newLogger(cfg configs.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(cfg.Level)))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(args, stderr, os.LookupEnv)
	if err != nil {
		return err
	}
	base := newLogger(cfg.Log, stderr)
	log := base.With("component", "serve")
	gogc, limit := setGCDefaults(os.Getenv, os.ReadFile)
	log.Debug("garbage collector", "gogc_default", gogc, "memory_limit_default", limit)
	a, err := startApp(cfg, base)
	if err != nil {
		return err
	}
	a.watchHangup(func() (configs.Config, error) { return loadConfig(args, io.Discard, os.LookupEnv) })
	a.logReady(log)
	var failed error
	select {
	case <-ctx.Done():
		log.Info("signal received: shutting down", "grace", cfg.MQTT.ShutdownGrace)
	case failed = <-a.failed:
		log.Error("listener failed: shutting down", "error", failed)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.MQTT.ShutdownGrace)
	defer cancel()
	if err := a.shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", errors.Join(failed, err))
	}
	log.Info("tether stopped")
	// A listener that failed is an error exit even after an orderly stop.
	return failed
}

// newBans is intrusion detection as cfg.Security says (Validate has
// checked the addresses); node names this node in a cluster ("" alone).
func newBans(cfg configs.Config, audit *devices.Audit, node string) *devices.Bans {
	o := devices.BanOptions{Threshold: cfg.Security.BanThreshold, Window: cfg.Security.BanWindow,
		Duration: cfg.Security.BanDuration, Audit: audit, Node: node}
	if o.Threshold == 0 {
		o.Threshold = -1 // off
	}
	for _, list := range []struct {
		in  []string
		out *[]*net.IPNet
	}{{cfg.Security.BanExempt, &o.Exempt}, {cfg.HTTP.TrustedProxies, &o.TrustedProxies},
		{cfg.MQTT.ProxyProtocolFrom, &o.TrustedProxies}} { // a balancer is not banned for its clients
		for _, p := range list.in {
			if n, err := forwarded.ParseCIDROrIP(p); err == nil {
				*list.out = append(*list.out, n)
			}
		}
	}
	return devices.NewBans(&o)
}
