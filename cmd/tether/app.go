package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/cluster"
	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/dashboard"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/listeners"
	"github.com/tether-iot/tether/listeners/forwarded"
)

// app is a running Tether: broker, HTTP servers and their shared parts.
type app struct {
	cfg configs.Config
	log *slog.Logger
	// base is the logger each part gets with its own "component".
	base   *slog.Logger
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
	// cluster is this node's place among others (cluster.go); nil alone.
	cluster *cluster.Node

	// lock is the data directory's: one server per directory.
	lock *devices.DirLock

	// tlsConf serves the certificate on TLS, WSS and HTTPS; nil without
	// TLS. cert is the certificate, reloaded on SIGHUP and file changes
	// (watchCert).
	tlsConf *tls.Config
	cert    *listeners.Certificate

	// Built at start-up for the parts after them.
	logins       *devices.LoginLimiter
	bans         *devices.Bans
	pubLimit     *broker.PublishLimit
	retainLimit  *broker.RetainedLimit
	backpressure *broker.Backpressure
	retained     *broker.Retained
	httpLimit    *listeners.HTTPLimit
	httpMetrics  *dashboard.HTTPMetrics
	metrics      http.Handler
	api          *dashboard.API

	httpLn, httpsLn net.Listener
	httpSrv         []*http.Server
	// serving is set once the broker and the HTTP servers run: from then
	// on they are stopped by their shutdown, not released by Abort.
	serving bool

	// hup are called on SIGHUP (reload.go); load reads the
	// configuration again; stopHangup ends the handler.
	hup        []func()
	load       func() (configs.Config, error)
	stopHangup chan struct{}

	// stops undo the parts that started, the last first: on shutdown,
	// and when start-up fails half way.
	stops []func(context.Context) error

	failed   chan error
	wg       sync.WaitGroup
	stopOnce sync.Once
	stopErr  error
}

// startApp builds and starts everything cfg asks for, one part at a
// time; each part registers how it is stopped (onStop), and shutdown
// runs those in reverse. On error what started is stopped again and
// nothing is left running. (The result is unnamed on purpose: the
// deferred clean-up below uses a, which a named result would have set to
// nil by then.)
//
// The order matters: the data directory's lock first (a second server on
// it stops there), then every listener's address (a port in use stops
// start-up with the flag to change), and only then the database, so a
// failed start creates no database and logs no password. The broker and
// the HTTP servers start last, and stop first (see serve).
func startApp(cfg configs.Config, log *slog.Logger) (_ *app, err error) {
	a := &app{cfg: cfg, base: log, log: log.With("component", "serve"), failed: make(chan error, 4), stopHangup: make(chan struct{})}
	defer func() {
		if err != nil {
			_ = a.runStops(context.Background())
		}
	}()
	for _, part := range []func() error{
		a.lockDataDir,
		a.loadCertificate,
		a.bindHTTP,
		a.tryMQTT,
		a.openDB,
		a.openRegistry,
		a.openDeviceData,
		a.openSessions,
		a.newAccess,
		a.joinCluster,
		a.newBroker,
		a.newAPI,
		a.serve,
		a.watchCert,
	} {
		if err = part(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// onStop registers how to undo the part that just started.
func (a *app) onStop(f func(context.Context) error) { a.stops = append(a.stops, f) }

// runStops runs the stops, the last registered first, and joins their
// errors.
func (a *app) runStops(ctx context.Context) error {
	var errs []error
	for i := len(a.stops) - 1; i >= 0; i-- {
		errs = append(errs, a.stops[i](ctx))
	}
	a.stops = nil
	return errors.Join(errs...)
}

// shutdown stops what startApp started, in reverse: the SIGHUP handler
// and certificate watch, then the broker (it refuses new MQTT
// connections, disconnects clients and flushes its hooks), then the HTTP
// servers, whose hijacked WebSocket connections the broker has already
// closed; then the stores, the database and the lock. Idempotent.
func (a *app) shutdown(ctx context.Context) error {
	a.stopOnce.Do(func() { a.stopErr = a.runStops(ctx) })
	return a.stopErr
}

// lockDataDir takes the data directory's lock: a second server on the
// same directory stops here.
func (a *app) lockDataDir() (err error) {
	if a.lock, err = devices.LockDataDir(a.cfg.DataDir); err != nil {
		return err
	}
	a.onStop(func(context.Context) error { return a.lock.Unlock() }) // the last: the database is closed
	return nil
}

// loadCertificate loads the TLS pair, when one is configured. New
// connections get the pair as it is now: renewed files are picked up on
// SIGHUP and when they change (see watchCert).
func (a *app) loadCertificate() (err error) {
	if !a.cfg.TLSEnabled() {
		return nil
	}
	if a.cert, err = listeners.LoadCertificate(a.cfg.TLS.Cert, a.cfg.TLS.Key, a.base); err != nil {
		return err
	}
	a.tlsConf = &tls.Config{GetCertificate: a.cert.GetCertificate, MinVersion: tls.VersionTLS12}
	return nil
}

// bindHTTP binds the HTTP listeners before the broker starts, so a port
// in use stops start-up before any MQTT client is let in.
func (a *app) bindHTTP() (err error) {
	a.onStop(func(context.Context) error {
		if !a.serving { // once serving, the servers' Shutdown closes them
			for _, ln := range []net.Listener{a.httpLn, a.httpsLn} {
				if ln != nil {
					ln.Close()
				}
			}
		}
		return nil
	})
	if a.cfg.HTTP.Addr != configs.Off {
		if a.httpLn, err = net.Listen("tcp", a.cfg.HTTP.Addr); err != nil {
			return listenError("http", "http.addr", a.cfg.HTTP.Addr, err)
		}
	}
	if a.tlsConf != nil && a.cfg.HTTP.HTTPSAddr != configs.Off {
		if a.httpsLn, err = net.Listen("tcp", a.cfg.HTTP.HTTPSAddr); err != nil {
			return listenError("https", "http.https_addr", a.cfg.HTTP.HTTPSAddr, err)
		}
	}
	return nil
}

// tryMQTT tries the MQTT listeners' addresses; the broker binds them
// itself, once its hooks exist.
func (a *app) tryMQTT() error { return tryListen(a.cfg, a.tlsConf != nil) }

// openDB opens the database.
func (a *app) openDB() (err error) {
	if a.db, err = openDatabase(a.cfg); err != nil {
		return err
	}
	a.onStop(func(context.Context) error { return a.db.Close() })
	// For tether backup and restore, which read neither the flags nor
	// the configuration file: where this server's data is.
	if err := markStorage(a.cfg.DataDir, a.db.Dialect == database.Postgres); err != nil {
		a.log.Warn("data directory: cannot record where the data is for tether backup and restore", "file", postgresMark, "error", err)
	}
	if err := devices.CheckDataDir(a.cfg.DataDir); err != nil {
		a.log.Warn("data directory is readable by other users", "error", err)
	}
	return nil
}

// openRegistry opens the registry; on the first start it creates user
// admin. The generated password is the one secret ever written to the
// log, once.
func (a *app) openRegistry() (err error) {
	if a.registry, err = devices.OpenRegistry(context.Background(), a.db, a.base); err != nil {
		return err
	}
	a.onStop(func(context.Context) error { return a.registry.Close() }) // flushes presence
	// On a shared database, the devices this node had online go offline.
	if err := a.registry.SetNode(context.Background(), a.nodeName()); err != nil {
		return err
	}
	envPassword := os.Getenv("TETHER_ADMIN_PASSWORD")
	generated, created, err := a.registry.EnsureAdmin(context.Background(), envPassword)
	if err != nil {
		return err
	}
	if generated != "" {
		a.log.Warn("first start: created user admin with a generated password; it is shown only this once, "+
			"change it or keep it safe (set TETHER_ADMIN_PASSWORD on first start to choose it)",
			"user", devices.AdminUser, "password", generated)
	}
	if envPassword != "" && !created {
		a.warnAdminPasswordIgnored(envPassword)
	}
	return nil
}

// warnAdminPasswordIgnored says that TETHER_ADMIN_PASSWORD was not used:
// the database had users already, and it sets only the first admin's
// password. Nothing is said when it is admin's password anyway (a
// deployment that keeps the variable set from its first start), since
// logging in with it works. The password itself is never logged.
func (a *app) warnAdminPasswordIgnored(envPassword string) {
	if _, err := a.registry.AuthenticateUser(context.Background(), devices.AdminUser, envPassword); err == nil {
		return
	}
	where := "data directory " + a.cfg.DataDir
	if a.db.Dialect == database.Postgres {
		where = "PostgreSQL database"
	}
	a.log.Warn("TETHER_ADMIN_PASSWORD is ignored: the "+where+" already has users, and it sets only the password "+
		"of the first admin, created on the first start with an empty database; it is not admin's password. "+
		"To change a password, log in as an admin and run tether users passwd NAME (or PATCH /api/v1/users/{name}); "+
		"to start afresh with this password, use an empty data directory (--data-dir)",
		"user", devices.AdminUser)
}

// openDeviceData opens telemetry history, commands, twins and the audit
// log.
func (a *app) openDeviceData() (err error) {
	if a.data, err = openDeviceData(a.cfg, a.db, a.registry, a.base); err != nil {
		return err
	}
	a.onStop(func(context.Context) error { return a.data.close() }) // flushes telemetry, commands, twins
	a.registry.SetAudit(a.data.audit)                               // the broker's refused logins
	return nil
}

// openSessions opens the MQTT session store.
func (a *app) openSessions() (err error) {
	if a.cfg.Cluster.Enabled() && a.db.Dialect == database.Postgres {
		// A cluster on PostgreSQL shares its sessions there (SPEC §10).
		a.store, err = openSharedSessions(a.cfg, a.db, a.nodeName(), a.data, a.base)
	} else {
		a.store, err = openSessions(a.cfg, a.db.Path, a.data, a.base)
	}
	if err != nil {
		return err
	}
	a.onStop(func(context.Context) error { return a.store.Close() })
	return nil
}

// newAccess builds who may do what: one login throttle for MQTT and
// HTTP, bans, and the broker's access hook with auth.rules.
func (a *app) newAccess() error {
	a.logins = devices.NewLoginLimiter(nil)
	a.bans = newBans(a.cfg, a.data.audit, a.nodeName())
	a.logins.OnFailure(a.bans.LoginFailed) // failed logins count towards bans
	a.auth = broker.NewAuth(broker.AuthOptions{
		Registry: a.registry, AllowAnonymous: a.cfg.Auth.AllowAnonymous, Logger: a.base, Logins: a.logins, Bans: a.bans,
		Sessions: a.store, // purged sessions are deleted from it
		Rules:    a.cfg.Auth.Rules,
	})
	// Retained messages are bounded per device and in all (before the
	// cluster, whose copies it counts).
	lim := retainedLimits(a.cfg)
	lim.Identity, lim.Logger = a.auth.Identity, a.base
	if a.cfg.Cluster.Enabled() {
		lim.BrokerOrigins = []string{cluster.InjectorID(a.nodeName())}
	}
	a.retainLimit = broker.NewRetainedLimit(lim)
	a.data.telemetryHook.SetIdentify(a.auth.Identity)
	a.data.commandHook.SetIdentify(a.auth.Identity)
	a.data.telemetryHook.SetTopics(telemetryTopics(a.cfg))
	a.hup = append(a.hup, a.reloadAccess)
	return nil
}

// newBroker assembles the broker with its hooks and binds its listeners;
// until serve starts it, a failed start releases them (Abort).
func (a *app) newBroker() (err error) {
	cfg := a.cfg
	a.pubLimit = broker.NewPublishLimit(broker.PublishLimitOptions{PerClient: cfg.Limits.PublishRatePerClient,
		DeviceRate: cfg.Limits.DevicePublishRate, DeviceBurst: cfg.Limits.DevicePublishBurst, Identity: a.auth.Identity})
	a.backpressure = broker.NewBackpressure(cfg.MQTT.BackpressureWait)
	a.retained = broker.NewRetained() // a SUBSCRIBE gets all its retained messages
	var tlsNames func() []string
	if a.cert != nil {
		tlsNames = a.cert.Names
	}
	o := brokerOptions(cfg)
	o.Logger, o.TLS, o.TLSNames, o.Access = a.base, a.tlsConf, tlsNames, a.auth
	// The session store stays the last hook: it must see each PUBLISH as
	// the other hooks left it.
	// The retained bound right after the rate: a refused message reaches
	// no other hook.
	o.Hooks = append(append([]mqtt.Hook{a.pubLimit, a.retainLimit}, a.data.hooks()...), a.backpressure, a.retained)
	o.Hooks = append(append(o.Hooks, a.clusterHooks()...), a.store)
	b, err := broker.New(o)
	if err != nil {
		return brokerListenError(cfg, err)
	}
	a.broker = b
	a.onStop(func(context.Context) error {
		if !a.serving {
			b.Abort() // release the MQTT sockets New bound
		}
		return nil
	})
	b.Limits.SetBanned(a.bans.AddressBanned) // a banned address is closed at accept
	a.store.Attach(b.Server)
	a.backpressure.Attach(b.Server)
	a.retained.Attach(b.Server)
	a.retainLimit.Attach(b.Server)
	a.data.attach(b.Server)
	return nil
}

// newAPI builds /metrics and the HTTP API.
func (a *app) newAPI() (err error) {
	b := a.broker
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(broker.NewCollector(b))
	a.httpLimit = listeners.NewHTTPLimit(a.cfg.Limits.HTTPMaxBodyBytes)
	reg.MustRegister(a.store.Collector(), a.pubLimit, a.retainLimit, a.backpressure, a.retained, b.Limits, b.Handshakes, a.httpLimit)
	reg.MustRegister(a.auth, a.bans)
	reg.MustRegister(a.data.collectors()...)
	a.httpMetrics = dashboard.NewHTTPMetrics()
	reg.MustRegister(buildInfo(), a.registry.Collector(), a.httpMetrics)
	a.registerCluster(reg)
	a.metrics = promhttp.HandlerFor(a.metricsGatherer(reg), promhttp.HandlerOpts{Registry: reg})
	views, sessions, deleter, err := a.apiViews() // in a cluster, the cluster's clients and sessions
	if err != nil {
		return err
	}
	a.api, err = dashboard.NewAPI(dashboard.APIOptions{
		Registry: a.registry, Broker: views, Sessions: sessions, SessionDeleter: deleter, Logger: a.base, Metrics: reg, TokenTTL: a.cfg.Auth.TokenTTL,
		Telemetry: a.data.telemetry, Commands: a.data.commandHook, Twins: a.data.twinHook,
		TrustedProxies: a.cfg.HTTP.TrustedProxies, Logins: a.logins, Audit: a.data.audit, Bans: a.bans,
		Nodes: a.clusterNodes(),
	})
	return err
}

// serve starts the broker, then the HTTP servers on the listeners
// bindHTTP bound. They stop the other way round from the rest: the
// broker first, so that it refuses new MQTT connections (/mqtt answers
// 503), disconnects its clients and flushes its hooks while the API still
// answers; Broker.Shutdown explains its own order, which keeps clear of
// the engine's races around Server.Close (mochi-mqtt issues 508 and
// 541). Then the HTTP servers, whose hijacked WebSocket connections the
// broker has closed by then.
func (a *app) serve() error {
	b := a.broker
	if err := b.Start(); err != nil {
		return err
	}
	a.serving = true
	a.onStop(func(ctx context.Context) error {
		err := b.Shutdown(ctx)
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
		return err
	})
	ready := func() error {
		if b.Closing() {
			return errors.New("shutting down")
		}
		if err := a.store.Healthy(); err != nil {
			return err
		}
		if err := a.db.Healthy(context.Background()); err != nil {
			return err
		}
		return a.clusterHealthy()
	}
	httpLog := a.base.With("component", "http")
	proxies, err := forwarded.ParseProxies(a.cfg.HTTP.TrustedProxies)
	if err != nil {
		return fmt.Errorf("http.trusted_proxies: %w", err)
	}
	serve := func(ln net.Listener, mqttHandler http.Handler, secure bool) {
		// limits.max_pending_connections_per_ip (a trusted proxy's
		// clients share its address: it is not held to it); under TLS, a
		// client that reads nothing (a response, MQTT over WebSocket) is
		// dropped after limits.write_timeout.
		ln = b.Limits.PendingListener(ln, proxies.Contains)
		ln = listeners.WriteTimeoutListener(ln, a.cfg.Limits.WriteTimeout)
		srv := &http.Server{
			Handler: a.httpLimit.Handler(dashboard.NewHandler(dashboard.Options{
				MQTT: mqttHandler, Metrics: a.metrics, Ready: ready, Warnings: a.warnings, Logger: httpLog,
				API: a.api, UI: dashboard.UI(), HTTPMetrics: a.httpMetrics,
			})),
			ReadHeaderTimeout: a.cfg.HTTP.HandshakeTimeout,
			// Headers and body; a hijacked WebSocket loses this deadline.
			ReadTimeout:    a.cfg.Limits.HTTPReadTimeout,
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
				srv.TLSConfig = a.tlsConf.Clone()
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
	return a.attachCluster()
}

// watchCert reloads the TLS certificate for new connections on SIGHUP
// (a hook of the one handler, see reload.go) and when its files change.
// Its stop, the first to run, ends the SIGHUP handler and the watch.
func (a *app) watchCert() error {
	a.onStop(func(context.Context) error {
		close(a.stopHangup)
		return nil
	})
	if a.cert == nil {
		return nil
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
	return nil
}

// warnings are what /readyz tells an operator besides readiness.
func (a *app) warnings() []string {
	var out []string
	for _, w := range []string{a.store.QueueStoreWarning(), a.clusterWarning()} {
		if w != "" {
			out = append(out, w)
		}
	}
	return out
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
