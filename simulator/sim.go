package simulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// SimConfig configures a fleet run. The zero value of each optional field
// means its default.
type SimConfig struct {
	Endpoint    Endpoint   // the broker
	TLS         TLSOptions // for tls and wss
	AllowRemote bool       // allow a broker that is not on loopback

	Fleet   *Fleet // profiles; nil means DefaultFleet
	Devices int    // fleet size; 0 means one per credential

	// Identities: Credentials if given; else devices registered through
	// Provisioner; else (neither) devices connect with their id as
	// username and no password, for brokers that allow anonymous clients.
	Credentials []Credential
	Provisioner *Provisioner
	Prefix      string    // device id prefix when ids are made up; default "sim-" and a random run id
	CredsOut    io.Writer // if set, provisioned credentials are written here (JSON lines)

	Interval      time.Duration // telemetry period for all profiles; 0 means each profile's
	Jitter        float64       // ± share of each wait, up to 1; default 0.1
	NoJitter      bool          // exact waits (Jitter 0 means the default)
	QoS           byte          // telemetry QoS
	Duration      time.Duration // 0 means until ctx ends
	CleanSession  bool          // default false: persistent sessions, as real devices use
	Churn         float64       // share of the fleet dropping off per minute (abruptly, so wills fire)
	ChurnDowntime time.Duration // how long churned devices stay away; default 30s

	ConnectConcurrency int           // connects in flight at once; default 32
	ConnectTimeout     time.Duration // per connect, subscribe and QoS>0 publish; default 10s
	KeepAlive          time.Duration // default 60s
	Progress           time.Duration // progress line period; default 5s, <0 for none
	Seed               uint64        // random seed; 0 means random
	Logger             *slog.Logger  // per-device detail at Debug; nil means none
}

func (c *SimConfig) setDefaults() {
	if c.Fleet == nil {
		c.Fleet = DefaultFleet()
	}
	if c.NoJitter {
		c.Jitter = 0
	} else if c.Jitter == 0 {
		c.Jitter = 0.1
	}
	if c.ChurnDowntime == 0 {
		c.ChurnDowntime = 30 * time.Second
	}
	if c.ConnectConcurrency == 0 {
		c.ConnectConcurrency = 32
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 60 * time.Second
	}
	if c.Progress == 0 {
		c.Progress = 5 * time.Second
	}
	if c.Seed == 0 {
		c.Seed = randomSeed()
	}
	if c.Prefix == "" {
		c.Prefix = fmt.Sprintf("sim-%04x-", c.Seed&0xffff)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Logger = c.Logger.With("component", "sim")
}

func (c *SimConfig) validate() error {
	switch {
	case c.Devices < 0 || c.Devices > 100_000:
		return fmt.Errorf("devices: %d is outside 0..100000", c.Devices)
	case c.Devices == 0 && len(c.Credentials) == 0:
		return errors.New("devices: give a number of devices or credentials")
	case len(c.Credentials) > 0 && c.Devices > len(c.Credentials):
		return fmt.Errorf("devices: %d wanted but only %d credentials given", c.Devices, len(c.Credentials))
	case c.QoS > 2:
		return fmt.Errorf("qos: %d is not 0, 1 or 2", c.QoS)
	case c.Interval != 0 && (c.Interval < 10*time.Millisecond || c.Interval > 24*time.Hour):
		return fmt.Errorf("interval: %s is outside 10ms..24h", c.Interval)
	case !ratio(c.Jitter): // NaN too
		return fmt.Errorf("jitter: %g is outside 0..1", c.Jitter)
	case c.Duration < 0:
		return errors.New("duration: must not be negative")
	case !(c.Churn >= 0 && c.Churn <= 60): // NaN too
		return fmt.Errorf("churn: %g is outside 0..60 (share of the fleet per minute)", c.Churn)
	case c.ChurnDowntime < 0 || c.ChurnDowntime > 24*time.Hour:
		return fmt.Errorf("churn downtime: %s is outside 0..24h", c.ChurnDowntime)
	case !validProgress(c.Progress):
		return fmt.Errorf("progress: %s is under %s (negative: no progress lines)", c.Progress, minProgress)
	case c.ConnectConcurrency < 1 || c.ConnectConcurrency > 10_000:
		return fmt.Errorf("connect concurrency: %d is outside 1..10000", c.ConnectConcurrency)
	case len(c.Credentials) == 0 && !ValidDeviceID(deviceID(c.Prefix, max(c.Devices, 1))):
		return fmt.Errorf("prefix: %q makes the invalid device id %q", c.Prefix, deviceID(c.Prefix, max(c.Devices, 1)))
	}
	return nil
}

// Validate reports the first setting RunSim would refuse, without
// connecting anywhere: a command line checks its flags with it before it
// prints or connects. The endpoint is RunSim's to check.
func (c SimConfig) Validate() error {
	c.setDefaults()
	return c.validate()
}

// deviceID is the id of the i-th device (from 1) a run makes up.
func deviceID(prefix string, i int) string { return fmt.Sprintf("%s%05d", prefix, i) }

// fleetRun is what the devices of one run share.
type fleetRun struct {
	cfg    *SimConfig
	dialer *dialer
	gate   gate
	stats  simStats
	errs   *errorKinds
}

func (f *fleetRun) logf(format string, args ...any) {
	if f.cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
		f.cfg.Logger.Debug(fmt.Sprintf(format, args...))
	}
}

// RunSim runs a simulated fleet until cfg.Duration passes or ctx ends, with
// a progress line on progress (may be nil) every cfg.Progress, and returns
// the summary. Devices disconnect cleanly before it returns.
func RunSim(ctx context.Context, cfg SimConfig, progressTo io.Writer) (Summary, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return Summary{}, fmt.Errorf("run sim: %w", err)
	}
	if err := cfg.Endpoint.CheckLoopback(cfg.AllowRemote); err != nil {
		return Summary{}, fmt.Errorf("run sim: %w", err)
	}
	d, err := newDialer(cfg.Endpoint, cfg.TLS, cfg.ConnectTimeout)
	if err != nil {
		return Summary{}, fmt.Errorf("run sim: %w", err)
	}
	creds, profiles, err := identities(ctx, &cfg)
	if err != nil {
		return Summary{}, fmt.Errorf("run sim: %w", err)
	}
	f := &fleetRun{cfg: &cfg, dialer: d, gate: newGate(cfg.ConnectConcurrency), errs: newErrorKinds(progressTo, "sim")}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Duration > 0 {
		runCtx, cancel = context.WithTimeout(runCtx, cfg.Duration)
		defer cancel()
	}
	var msgs rate
	stopProgress := progress(progressTo, cfg.Progress, func(elapsed, since time.Duration) string {
		s := &f.stats
		return fmt.Sprintf("sim %s: %d/%d connected, %.1f msg/s, %d errors, %d commands answered, %d failed",
			elapsed.Truncate(time.Second), s.connected.Load(), len(creds), msgs.per(s.published.Load(), since),
			s.errors(), s.commandsAnswered.Load(), s.commandsFailed.Load())
	})
	defer stopProgress()

	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range creds {
		dev := newDevice(f, c, profiles[i], cfg.Seed+uint64(i))
		wg.Go(func() { dev.run(runCtx) })
	}
	<-runCtx.Done()
	connected := f.stats.connected.Load()
	elapsed := time.Since(start)
	wg.Wait()
	stopProgress()

	sum := f.stats.summary(connected, elapsed)
	sum.Devices = len(creds)
	sum.Broker = cfg.Endpoint.URL()
	sum.Transport = cfg.Endpoint.Transport
	sum.QoS = cfg.QoS
	sum.Errors = f.errs.list()
	return sum, nil
}

// identities returns each device's credential and profile: from the given
// credentials, or registered through the API, or made up for anonymous use.
func identities(ctx context.Context, cfg *SimConfig) ([]Credential, []*Profile, error) {
	n := cfg.Devices
	if n == 0 {
		n = len(cfg.Credentials)
	}
	profiles := cfg.Fleet.Assign(n)
	if len(cfg.Credentials) > 0 {
		return cfg.Credentials[:n], profiles, nil
	}
	specs := make([]DeviceSpec, n)
	for i := range specs {
		id := deviceID(cfg.Prefix, i+1) // valid: validate checked the longest
		labels := map[string]string{"simulator": "tether-sim", "profile": profiles[i].Name}
		for k, v := range profiles[i].Labels {
			labels[k] = v
		}
		specs[i] = DeviceSpec{ID: id, Name: id, Type: profiles[i].Type, Labels: labels}
	}
	if cfg.Provisioner == nil {
		creds := make([]Credential, n)
		for i, s := range specs {
			creds[i] = Credential{ID: s.ID}
		}
		return creds, profiles, nil
	}
	creds, err := cfg.Provisioner.Provision(ctx, specs)
	if err != nil {
		return nil, nil, fmt.Errorf("identities: %w", err)
	}
	if cfg.CredsOut != nil {
		if err := WriteCredentials(cfg.CredsOut, creds); err != nil {
			return nil, nil, fmt.Errorf("identities: %w", err)
		}
	}
	return creds, profiles, nil
}

// randomSeed returns a non-zero random seed.
func randomSeed() uint64 {
	for {
		if s := rand.Uint64(); s != 0 {
			return s
		}
	}
}
