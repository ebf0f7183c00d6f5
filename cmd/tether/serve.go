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

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/dashboard"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/listeners"
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

// app is a running Tether: broker, HTTP servers and their shared parts.
type app struct {
	cfg    configs.Config
	log    *slog.Logger
	broker *broker.Broker
	// db is the one SQLite database, opened first and closed last (after
	// the broker's Shutdown has stopped the hooks that write to it).
	db *devices.DB
	// store is the MQTT session store (a broker hook on its own file,
	// sessions.db).
	store *sessions.Store
	// registry holds devices, users, tokens and sessions (on db); auth is
	// the broker's access hook on it.
	registry *devices.Registry
	auth     *broker.Auth
	// data holds telemetry history, commands and twins (on db).
	data *deviceData

	// lock is the data directory's: one server per directory.
	lock *devices.DirLock

	httpLn, httpsLn net.Listener
	httpSrv         []*http.Server
	// cert is the TLS certificate, reloaded on SIGHUP and file changes
	// (watchCert); nil without TLS.
	cert *listeners.Certificate

	// hup are called on SIGHUP (reload.go); load reads the
	// configuration again; stopHangup ends the handler.
	hup        []func()
	load       func() (configs.Config, error)
	stopHangup chan struct{}

	failed   chan error
	wg       sync.WaitGroup
	stopOnce sync.Once
	stopErr  error
}

// startApp builds and starts everything cfg asks for. On error nothing is
// left running. (The result is unnamed on purpose: the deferred clean-ups
// below use a, which a named result would have set to nil by then.)
//
// The order matters to a newcomer: the data directory's lock first (a
// second server on it stops there), then every listener's address (a port
// in use stops start-up with the flag to change), and only then the
// database, so a failed start creates no database and logs no password.
// log is the base logger; each part gets it with its "component".
func startApp(cfg configs.Config, log *slog.Logger) (_ *app, err error) {
	a := &app{cfg: cfg, log: log.With("component", "serve"), failed: make(chan error, 4), stopHangup: make(chan struct{})}
	if a.lock, err = devices.LockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = a.lock.Unlock()
		}
	}()
	var tlsConf *tls.Config
	var tlsNames func() []string
	if cfg.TLSEnabled() {
		// New connections get the pair as it is now: renewed files are
		// picked up on SIGHUP and when they change (see a.watchCert).
		if a.cert, err = listeners.LoadCertificate(cfg.TLS.Cert, cfg.TLS.Key, log); err != nil {
			return nil, err
		}
		tlsConf = &tls.Config{GetCertificate: a.cert.GetCertificate, MinVersion: tls.VersionTLS12}
		tlsNames = a.cert.Names
	}
	// Bind the HTTP listeners before the broker starts, so a port in use
	// stops start-up before any MQTT client is let in, and try the MQTT
	// ones (the broker binds them itself, once its hooks exist).
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
			return nil, listenError("http", "http.addr", cfg.HTTP.Addr, err)
		}
	}
	if tlsConf != nil && cfg.HTTP.HTTPSAddr != configs.Off {
		if a.httpsLn, err = net.Listen("tcp", cfg.HTTP.HTTPSAddr); err != nil {
			return nil, listenError("https", "http.https_addr", cfg.HTTP.HTTPSAddr, err)
		}
	}
	if err = tryListen(cfg, tlsConf != nil); err != nil {
		return nil, err
	}

	if a.db, err = devices.OpenDB(cfg.DataDir); err != nil {
		return nil, err
	}
	if err := devices.CheckDataDir(cfg.DataDir); err != nil {
		log.Warn("data directory is readable by other users", "error", err)
	}
	defer func() {
		if err != nil {
			_ = a.db.Close()
		}
	}()
	if a.registry, err = devices.OpenRegistry(context.Background(), a.db, log.With("component", "registry")); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = a.registry.Close() // before the deferred db.Close above
		}
	}()
	// First start: create user admin. The generated password is the one
	// secret ever written to the log, once.
	generated, err := a.registry.EnsureAdmin(context.Background(), os.Getenv("TETHER_ADMIN_PASSWORD"))
	if err != nil {
		return nil, err
	}
	if generated != "" {
		a.log.Warn("first start: created user admin with a generated password; it is shown only this once, "+
			"change it or keep it safe (set TETHER_ADMIN_PASSWORD on first start to choose it)",
			"user", devices.AdminUser, "password", generated)
	}
	if a.data, err = openDeviceData(cfg, a.db, a.registry, log); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = a.data.close()
		}
	}()
	logins := devices.NewLoginLimiter(nil) // one login throttle for MQTT and HTTP
	a.registry.SetAudit(a.data.audit)      // the broker's refused logins
	if a.store, err = openSessions(cfg, a.db.Path, a.data, log); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = a.store.Close()
		}
	}()
	bans := newBans(cfg, a.data.audit)
	logins.OnFailure(bans.LoginFailed) // failed logins count towards bans
	a.auth = broker.NewAuth(broker.AuthOptions{
		Registry: a.registry, AllowAnonymous: cfg.Auth.AllowAnonymous, Logger: log, Logins: logins, Bans: bans,
		Sessions: a.store, // purged sessions are deleted from it
		Rules:    cfg.Auth.Rules,
	})
	a.data.telemetryHook.SetIdentify(a.auth.Identity)
	a.data.telemetryHook.SetTopics(telemetryTopics(cfg))
	a.hup = append(a.hup, a.reloadAccess)
	// The session store stays the last hook: it must see each PUBLISH as
	// the other hooks left it.
	pubLimit := broker.NewPublishLimit(broker.PublishLimitOptions{PerClient: cfg.Limits.PublishRatePerClient,
		DeviceRate: cfg.Limits.DevicePublishRate, DeviceBurst: cfg.Limits.DevicePublishBurst, Identity: a.auth.Identity})
	backpressure := broker.NewBackpressure(cfg.MQTT.BackpressureWait)
	retained := broker.NewRetained() // a SUBSCRIBE gets all its retained messages
	bo := brokerOptions(cfg)
	bo.Logger, bo.TLS, bo.TLSNames, bo.Access = log, tlsConf, tlsNames, a.auth
	bo.Hooks = append(append([]mqtt.Hook{pubLimit}, a.data.hooks()...), backpressure, retained, a.store)
	b, err := broker.New(bo)
	if err != nil {
		return nil, brokerListenError(cfg, err)
	}
	a.broker = b
	b.Limits.SetBanned(bans.AddressBanned) // a banned address is closed at accept
	a.store.Attach(b.Server)
	backpressure.Attach(b.Server)
	retained.Attach(b.Server)
	a.data.attach(b.Server)
	defer func() {
		if err != nil {
			b.Abort() // release the MQTT sockets New bound
		}
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(broker.NewCollector(b))
	httpLimit := listeners.NewHTTPLimit(cfg.Limits.HTTPMaxBodyBytes)
	reg.MustRegister(a.store.Collector(), pubLimit, backpressure, retained, b.Limits, b.Handshakes, httpLimit)
	reg.MustRegister(a.auth, bans)
	reg.MustRegister(a.data.collectors()...)
	httpMetrics := dashboard.NewHTTPMetrics()
	reg.MustRegister(buildInfo(), a.registry.Collector(), httpMetrics)
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	api, err := dashboard.NewAPI(dashboard.APIOptions{
		Registry: a.registry, Broker: b, Sessions: a.store, Logger: log.With("component", "api"), Metrics: reg, TokenTTL: cfg.Auth.TokenTTL,
		Telemetry: a.data.telemetry, Commands: a.data.commandHook, Twins: a.data.twinHook,
		TrustedProxies: cfg.HTTP.TrustedProxies, Logins: logins, Audit: a.data.audit, Bans: bans,
	})
	if err != nil {
		return nil, err
	}

	ready := func() error {
		if b.Closing() {
			return errors.New("shutting down")
		}
		if err := a.store.Healthy(); err != nil {
			return err
		}
		return nil
	}
	if err = b.Start(); err != nil {
		return nil, err
	}
	httpLog := log.With("component", "http")
	serve := func(ln net.Listener, mqttHandler http.Handler, secure bool) {
		srv := &http.Server{
			Handler: httpLimit.Handler(dashboard.NewHandler(dashboard.Options{
				MQTT: mqttHandler, Metrics: metrics, Ready: ready, Warnings: a.warnings, Logger: httpLog,
				API: api, UI: dashboard.UI(), HTTPMetrics: httpMetrics,
			})),
			ReadHeaderTimeout: cfg.HTTP.HandshakeTimeout,
			// Headers and body; a hijacked WebSocket loses this deadline.
			ReadTimeout:    cfg.Limits.HTTPReadTimeout,
			IdleTimeout:    2 * time.Minute,
			MaxHeaderBytes: 64 << 10,
			ErrorLog:       slog.NewLogLogger(httpLog.Handler(), slog.LevelDebug),
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
		httpLog.Debug("http listening", "scheme", scheme, "addr", ln.Addr().String())
	}
	if a.httpLn != nil {
		serve(a.httpLn, b.WebSocketHandler(), false)
	}
	if a.httpsLn != nil {
		serve(a.httpsLn, b.SecureWebSocketHandler(), true)
	}
	a.watchCert()
	return a, nil
}

// watchCert reloads the TLS certificate for new connections on SIGHUP
// (a hook of the one handler, see reload.go) and when its files change,
// until shutdown.
func (a *app) watchCert() {
	if a.cert == nil {
		return
	}
	a.hup = append(a.hup, func() {
		a.log.Info("SIGHUP: reloading the TLS certificate", "cert", a.cfg.TLS.Cert, "key", a.cfg.TLS.Key)
		_ = a.cert.Reload()
	})
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.cert.Watch(a.cfg.TLS.ReloadInterval, a.stopHangup)
	}()
}

// shutdown stops the broker first (it refuses new MQTT connections,
// disconnects clients and flushes its hooks), then the HTTP servers, whose
// hijacked WebSocket connections the broker has already closed.
func (a *app) shutdown(ctx context.Context) error {
	a.stopOnce.Do(func() {
		close(a.stopHangup)
		errs := []error{a.broker.Shutdown(ctx)}
		for _, s := range a.httpSrv {
			// Requests still running when the grace period ends are cut
			// off, as the broker cuts off its last connections: an
			// orderly stop all the same, not a failure.
			if err := s.Shutdown(ctx); err != nil {
				a.log.Warn("shutdown grace over: closing HTTP requests still running", "error", err)
				s.Close()
			}
		}
		a.wg.Wait()
		errs = append(errs, a.data.close())     // flushes telemetry, commands, twins
		errs = append(errs, a.registry.Close()) // flushes presence
		errs = append(errs, a.store.Close())
		errs = append(errs, a.db.Close())
		errs = append(errs, a.lock.Unlock()) // the last: the database is closed
		a.stopErr = errors.Join(errs...)
	})
	return a.stopErr
}

// warnings are what /readyz tells an operator besides readiness.
func (a *app) warnings() []string {
	if w := a.store.QueueStoreWarning(); w != "" {
		return []string{w}
	}
	return nil
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

// newBans is intrusion detection as cfg.Security says (Validate has
// checked the addresses).
func newBans(cfg configs.Config, audit *devices.Audit) *devices.Bans {
	o := devices.BanOptions{Threshold: cfg.Security.BanThreshold, Window: cfg.Security.BanWindow,
		Duration: cfg.Security.BanDuration, Audit: audit}
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
