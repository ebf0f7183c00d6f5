package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/configs"
)

// SIGHUP reloads what can change without a restart. There is one handler:
// each part that reloads adds a hook to app.hup (the access rules and
// telemetry mappings here; the TLS certificate adds its own) and the
// handler calls them in order.

// watchHangup calls the SIGHUP hooks each time the process gets SIGHUP,
// until shutdown. load reads the configuration again as start-up did
// (file, environment, flags).
func (a *app) watchHangup(load func() (configs.Config, error)) {
	a.load = load
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer signal.Stop(ch)
		for {
			select {
			case <-a.stopHangup:
				return
			case <-ch:
				a.log.Info("SIGHUP: reloading")
				for _, f := range a.hup {
					f()
				}
			}
		}
	}()
}

// reloadAccess reads the configuration again and applies its auth.rules
// and telemetry.topics to every connection, dropping none. A
// configuration that does not validate changes nothing; other keys take
// effect at the next start.
func (a *app) reloadAccess() {
	if a.load == nil {
		return
	}
	cfg, err := a.load()
	if err != nil {
		a.log.Error("SIGHUP: configuration not reloaded; the rules in force stay", "error", err)
		return
	}
	rs, err := broker.CompileRules(cfg.Auth.Rules)
	if err != nil {
		a.log.Error("SIGHUP: configuration not reloaded; the rules in force stay", "error", err)
		return
	}
	a.auth.SetRules(rs)
	a.data.telemetryHook.SetTopics(cfg.Telemetry.Topics)
	a.log.Info("SIGHUP: auth.rules and telemetry.topics reloaded", "rules", rs.Len(), "telemetry_topics", len(cfg.Telemetry.Topics))
}
