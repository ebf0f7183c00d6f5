package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/tether-iot/tether/configs"
)

// listenError explains a listener that could not bind: which listener,
// and the flag, variable and key that move it. The error from net.Listen
// stays wrapped, so errors.Is(err, syscall.EADDRINUSE) holds.
func listenError(what, key, addr string, err error) error {
	return &listenerError{what: what, key: key, addr: addr, err: err}
}

// listenerError is a listener that could not bind (listenError).
type listenerError struct {
	what, key, addr string // "http", "http.addr", "127.0.0.1:8080"
	err             error  // net.Listen's
}

func (e *listenerError) Unwrap() error { return e.err }

// reason says why the address could not be bound.
func (e *listenerError) reason() string {
	switch {
	case errors.Is(e.err, syscall.EADDRINUSE):
		return "address already in use (another tether, or another program, listens there)"
	case errors.Is(e.err, syscall.EACCES):
		return "permission denied (ports below 1024 need privileges)"
	default:
		return e.err.Error()
	}
}

// Error names what moves the listener on tether serve: its flag, its
// variable and its key.
func (e *listenerError) Error() string {
	flagName := e.key
	for _, f := range serveFlags {
		if f.key == e.key {
			flagName = "--" + f.flag
		}
	}
	how := fmt.Sprintf("choose another address with %s (or %s, or %s in the configuration file), or %s off",
		flagName, configs.EnvName(e.key), e.key, flagName)
	return fmt.Sprintf("%s listener on %s: %s: %s", e.what, e.addr, e.reason(), how)
}

// tryListen binds and releases the MQTT listeners' addresses, so that one
// in use stops start-up before the database is opened. The broker binds
// them for good once its hooks exist.
func tryListen(cfg configs.Config, tlsOn bool) error {
	try := func(what, key, addr string) error {
		if addr == configs.Off {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return listenError(what, key, addr, err)
		}
		return ln.Close()
	}
	if err := try("mqtt", "mqtt.addr", cfg.MQTT.Addr); err != nil {
		return err
	}
	if tlsOn {
		return try("mqtt tls", "mqtt.tls_addr", cfg.MQTT.TLSAddr)
	}
	return nil
}

// brokerListenError explains a bind failure of the broker's own
// listeners (the address was free a moment before, at tryListen).
func brokerListenError(cfg configs.Config, err error) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return err
	}
	if strings.Contains(err.Error(), "listener tls ") {
		return listenError("mqtt tls", "mqtt.tls_addr", cfg.MQTT.TLSAddr, err)
	}
	return listenError("mqtt", "mqtt.addr", cfg.MQTT.Addr, err)
}

// logReady writes the one start-up line: every listener, the data
// directory, and where to point a browser.
func (a *app) logReady(log *slog.Logger) {
	dir, err := filepath.Abs(a.cfg.DataDir)
	if err != nil {
		dir = a.cfg.DataDir
	}
	attrs := []any{"version", version()}
	if v := a.mqttAddr(); v != "" {
		attrs = append(attrs, "mqtt", "tcp://"+v)
	}
	if v := a.tlsAddr(); v != "" {
		attrs = append(attrs, "mqtt_tls", "tls://"+v)
	}
	open := ""
	if v := a.httpAddr(); v != "" {
		attrs = append(attrs, "http", "http://"+v+"/", "ws", "ws://"+v+"/mqtt")
		open = "http://" + browserHost(v) + "/"
	}
	if v := a.httpsAddr(); v != "" {
		attrs = append(attrs, "https", "https://"+v+"/", "wss", "wss://"+v+"/mqtt")
		if open == "" {
			open = "https://" + browserHost(v) + "/"
		}
	}
	if open != "" && a.cfg.HTTP.PublicURL != "" {
		// Behind a proxy the listen address is not where people go
		// (deploy/README.md); the listeners stay in the attributes.
		open = strings.TrimRight(a.cfg.HTTP.PublicURL, "/") + "/"
	}
	attrs = append(attrs, "data_dir", dir, "database", a.db.String())
	msg := "tether ready"
	if open != "" {
		msg += ": open " + open
	}
	log.Info(msg, attrs...)
}

// browserHost is addr with a wildcard host ("", 0.0.0.0, ::) replaced by
// localhost, for a URL to open on the same machine.
func browserHost(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
