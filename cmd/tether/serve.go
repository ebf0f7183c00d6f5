package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/dashboard"
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
}

// loadConfig layers defaults, the file, the environment and the flags.
func loadConfig(args []string, stderr io.Writer, lookup func(string) (string, bool)) (configs.Config, error) {
	fs := newFlagSet("serve", "serve [-c FILE] [flags]", stderr)
	file := fs.String("c", "", "YAML configuration file (see configs/tether.yaml)")
	set := map[string]*string{}
	for _, f := range serveFlags {
		set[f.key] = fs.String(f.flag, "", f.usage)
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
	log := newLogger(cfg.Log, stderr)
	a, err := startApp(cfg, log)
	if err != nil {
		return err
	}
	log.Info("tether started", "version", version(), "http", a.httpAddr(), "mqtt", a.mqttAddr())
	select {
	case <-ctx.Done():
		log.Info("signal received: shutting down", "grace", cfg.MQTT.ShutdownGrace)
	case err := <-a.failed:
		log.Error("listener failed: shutting down", "error", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.MQTT.ShutdownGrace)
	defer cancel()
	if err := a.shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("tether stopped")
	return nil
}

// app is a running Tether: broker, HTTP servers and their shared parts.
type app struct {
	cfg    configs.Config
	log    *slog.Logger
	broker *broker.Broker

	httpLn, httpsLn net.Listener
	httpSrv         []*http.Server

	failed   chan error
	wg       sync.WaitGroup
	stopOnce sync.Once
	stopErr  error
}

// startApp builds and starts everything cfg asks for. On error nothing is
// left running.
func startApp(cfg configs.Config, log *slog.Logger) (a *app, err error) {
	a = &app{cfg: cfg, log: log, failed: make(chan error, 4)}
	var tlsConf *tls.Config
	if cfg.TLSEnabled() {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("tls: load certificate %s and key %s: %w", cfg.TLS.Cert, cfg.TLS.Key, err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	b, err := broker.New(cfg, broker.Options{Logger: log, TLS: tlsConf})
	if err != nil {
		return nil, err
	}
	a.broker = b

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(broker.NewCollector(b))
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})

	ready := func() error {
		if b.Closing() {
			return errors.New("shutting down")
		}
		return nil
	}
	// Bind the HTTP listeners before the broker starts, so a port in use
	// stops start-up before any MQTT client is let in.
	defer func() {
		if err != nil {
			for _, ln := range []net.Listener{a.httpLn, a.httpsLn} {
				if ln != nil {
					ln.Close()
				}
			}
		}
	}()
	if cfg.HTTP.Addr != configs.Off {
		if a.httpLn, err = net.Listen("tcp", cfg.HTTP.Addr); err != nil {
			return nil, fmt.Errorf("http listener on %s: %w", cfg.HTTP.Addr, err)
		}
	}
	if tlsConf != nil && cfg.HTTP.HTTPSAddr != configs.Off {
		if a.httpsLn, err = net.Listen("tcp", cfg.HTTP.HTTPSAddr); err != nil {
			return nil, fmt.Errorf("https listener on %s: %w", cfg.HTTP.HTTPSAddr, err)
		}
	}
	if err = b.Start(); err != nil {
		return nil, err
	}
	serve := func(ln net.Listener, mqttHandler http.Handler, secure bool) {
		srv := &http.Server{
			Handler: dashboard.NewHandler(dashboard.Options{
				MQTT: mqttHandler, Metrics: metrics, Ready: ready, Logger: log,
			}),
			ReadHeaderTimeout: cfg.HTTP.HandshakeTimeout,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
		a.httpSrv = append(a.httpSrv, srv)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			var err error
			if secure {
				srv.TLSConfig = tlsConf.Clone()
				err = srv.ServeTLS(ln, "", "")
			} else {
				err = srv.Serve(ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.failed <- fmt.Errorf("http server on %s: %w", ln.Addr(), err)
			}
		}()
		scheme := "http"
		if secure {
			scheme = "https"
		}
		log.Info("http listening", "scheme", scheme, "addr", ln.Addr().String())
	}
	if a.httpLn != nil {
		serve(a.httpLn, b.WebSocketHandler(), false)
	}
	if a.httpsLn != nil {
		serve(a.httpsLn, b.SecureWebSocketHandler(), true)
	}
	return a, nil
}

// shutdown stops the broker first (it refuses new MQTT connections,
// disconnects clients and flushes its hooks), then the HTTP servers, whose
// hijacked WebSocket connections the broker has already closed.
func (a *app) shutdown(ctx context.Context) error {
	a.stopOnce.Do(func() {
		errs := []error{a.broker.Shutdown(ctx)}
		for _, s := range a.httpSrv {
			if err := s.Shutdown(ctx); err != nil {
				errs = append(errs, err)
				s.Close()
			}
		}
		a.wg.Wait()
		a.stopErr = errors.Join(errs...)
	})
	return a.stopErr
}

func (a *app) mqttAddr() string {
	if a.broker.TCP == nil {
		return ""
	}
	return a.broker.TCP.Address()
}

func (a *app) tlsAddr() string {
	if a.broker.TLS == nil {
		return ""
	}
	return a.broker.TLS.Address()
}

func (a *app) httpAddr() string {
	if a.httpLn == nil {
		return ""
	}
	return a.httpLn.Addr().String()
}

func (a *app) httpsAddr() string {
	if a.httpsLn == nil {
		return ""
	}
	return a.httpsLn.Addr().String()
}
