package main

import (
	"context"
	"errors"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
)

// deviceData is telemetry history, commands and twins: their stores on
// the database and the broker hooks that feed them; and the audit log.
type deviceData struct {
	telemetry *devices.Telemetry
	commands  *devices.Commands
	twins     *devices.Twins
	audit     *devices.Audit

	telemetryHook *broker.TelemetryHook
	commandHook   *broker.CommandHook
	twinHook      *broker.TwinHook
}

// openDeviceData opens the four stores on db (migrating their
// components) and builds their hooks. The telemetry store hands last
// values to reg, and reg tells the history, command and twin stores of
// the devices it deletes. Each store and hook logs with its own
// component. On error nothing is left running.
func openDeviceData(cfg configs.Config, db *devices.DB, reg *devices.Registry, log *slog.Logger) (d *deviceData, err error) {
	ctx := context.Background()
	// opened, not the named result (nil once an error is returned), is
	// what the clean-up closes.
	opened := &deviceData{}
	d = opened
	defer func() {
		if err != nil {
			_ = opened.close()
		}
	}()
	if d.telemetry, err = devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{
		FlushInterval:       cfg.Telemetry.FlushInterval,
		QueueSize:           cfg.Telemetry.QueueSize,
		QueueBytes:          cfg.Telemetry.QueueBytes,
		Retention:           cfg.Telemetry.Retention,
		RollupRetention:     cfg.Telemetry.RollupRetention,
		RetentionSize:       cfg.Telemetry.RetentionSize,
		RollupRetentionSize: cfg.Telemetry.RollupRetentionSize,
		DeviceValuesRate:    cfg.Telemetry.DeviceValuesRate,
		DeviceValuesBurst:   cfg.Telemetry.DeviceValuesBurst,
		Logger:              log,
		LastValues:          reg,
	}); err != nil {
		return nil, err
	}
	// On a shared database a device's metric names are read again when it
	// connects here: the cap is the cluster's, not each node's.
	reg.OnOnline(d.telemetry.RefreshNames)
	if d.commands, err = devices.OpenCommands(ctx, db, &devices.CommandsOptions{MaxPerDevice: cfg.Commands.MaxPerDevice, Logger: log}); err != nil {
		return nil, err
	}
	if d.twins, err = devices.OpenTwins(ctx, db, &devices.TwinsOptions{Logger: log}); err != nil {
		return nil, err
	}
	if d.audit, err = devices.OpenAudit(ctx, db, &devices.AuditOptions{Retention: cfg.Audit.Retention, Logger: log}); err != nil {
		return nil, err
	}
	reg.Attach(d.telemetry, d.commands, d.twins)
	d.telemetryHook = broker.NewTelemetryHook(d.telemetry, log)
	d.commandHook = broker.NewCommandHook(d.commands, log)
	d.twinHook = broker.NewTwinHook(d.twins, log)
	return d, nil
}

// hooks are the broker hooks, to go before the session store.
func (d *deviceData) hooks() []mqtt.Hook {
	return []mqtt.Hook{d.telemetryHook, d.commandHook, d.twinHook}
}

// attach lets the command and twin hooks publish on srv.
func (d *deviceData) attach(srv *mqtt.Server) {
	d.commandHook.Attach(srv)
	d.twinHook.Attach(srv)
}

func (d *deviceData) collectors() []prometheus.Collector {
	return []prometheus.Collector{d.telemetry.Collector(), d.commands.Collector(), d.twins.Collector(), d.commandHook}
}

// close flushes and stops the stores; call it after the broker has stopped
// and before the database closes. Idempotent.
func (d *deviceData) close() error {
	var errs []error
	if d.telemetry != nil {
		errs = append(errs, d.telemetry.Close())
	}
	if d.commands != nil {
		errs = append(errs, d.commands.Close())
	}
	if d.twins != nil {
		errs = append(errs, d.twins.Close())
	}
	errs = append(errs, d.audit.Close()) // nil-safe
	return errors.Join(errs...)
}

// openSessions opens the MQTT session store (sessions.db in the data
// directory, moving sessions an older Tether kept in legacy, tether.db);
// it tells the command tracker of the commands it delivers or refuses.
func openSessions(cfg configs.Config, legacy string, d *deviceData, log *slog.Logger) (*sessions.Store, error) {
	return sessions.Open(cfg.DataDir, sessionOptions(cfg, legacy, d, log))
}

// openSharedSessions opens the session store that a cluster's nodes share
// in PostgreSQL (db), for the node named node.
func openSharedSessions(cfg configs.Config, db *devices.DB, node string, d *deviceData, log *slog.Logger) (*sessions.Store, error) {
	return sessions.OpenShared(db, node, sessionOptions(cfg, "", d, log))
}

func sessionOptions(cfg configs.Config, legacy string, d *deviceData, log *slog.Logger) *sessions.Options {
	return &sessions.Options{
		Logger:            log,
		Legacy:            legacy,
		MaxQueuedMessages: cfg.MQTT.MaxQueuedMessages,
		MaxQueuedBytes:    cfg.MQTT.MaxQueuedBytes,
		MaxStoreBytes:     cfg.MQTT.MaxQueueStoreBytes,
		MaxTopicLevels:    cfg.MQTT.MaxTopicLevels,
		Deliveries:        []mqtt.Hook{d.commandHook},
		Refused:           d.commandHook.Refused,
	}
}
