package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
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
	note := func(detail string) {
		if a.data.audit != nil {
			a.data.audit.Note(devices.AuditEntry{Action: devices.AuditRulesReloaded, Actor: "SIGHUP", Via: "signal", Detail: detail})
		}
	}
	cfg, err := a.load()
	var rs *broker.Rules
	if err == nil {
		rs, err = broker.CompileRules(cfg.Auth.Rules)
	}
	if err != nil {
		a.log.Error("SIGHUP: configuration not reloaded; the rules in force stay", "error", err)
		note("refused: the configuration does not validate")
		return
	}
	a.auth.SetRules(rs)
	a.data.telemetryHook.SetTopics(telemetryTopics(cfg))
	a.log.Info("SIGHUP: auth.rules and telemetry.topics reloaded", "rules", rs.Len(), "telemetry_topics", len(cfg.Telemetry.Topics))
	note(fmt.Sprintf("%d auth rules, %d telemetry topics", rs.Len(), len(cfg.Telemetry.Topics)))
}
