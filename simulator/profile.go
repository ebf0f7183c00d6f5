package simulator

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Fleet is a fleet file: the device profiles to simulate and their shares
// of the fleet. configs/fleet.example.yaml documents every key.
type Fleet struct {
	Profiles []Profile `yaml:"profiles"`
}

// Profile is one kind of simulated device.
type Profile struct {
	Name     string            `yaml:"name"`     // selects the profile (--profile NAME)
	Type     string            `yaml:"type"`     // registry device type; defaults to Name
	Weight   int               `yaml:"weight"`   // share of the fleet; default 1
	Interval time.Duration     `yaml:"interval"` // telemetry period; default 10s
	Labels   map[string]string `yaml:"labels"`   // registry labels
	Settings map[string]any    `yaml:"settings"` // initial reported twin state
	Metrics  []Metric          `yaml:"metrics"`
	Commands Behaviour         `yaml:"commands"`
	Will     *Will             `yaml:"will"` // optional last will
}

// Behaviour is how a profile's devices answer commands. Commands reboot,
// set and ping are built in; Accept names more that simply succeed; any
// other command is answered with status "error".
type Behaviour struct {
	FailRatio      float64       `yaml:"fail_ratio"`      // share answered with status "error"
	IgnoreRatio    float64       `yaml:"ignore_ratio"`    // share never answered
	Delay          time.Duration `yaml:"delay"`           // time taken to answer
	RebootDowntime time.Duration `yaml:"reboot_downtime"` // offline time after reboot; default 5s
	Accept         []string      `yaml:"accept"`          // extra command names answered "ok"
}

// Will is a last-will message; "{id}" in Topic and Payload is replaced by
// the device id.
type Will struct {
	Topic   string `yaml:"topic"`
	Payload string `yaml:"payload"`
	QoS     byte   `yaml:"qos"`
	Retain  bool   `yaml:"retain"`
}

// Metric is one telemetry value and the generator that makes it.
type Metric struct {
	Name     string `yaml:"name"`
	Kind     string `yaml:"kind"`     // random_walk, sine, step, counter or gps
	Decimals *int   `yaml:"decimals"` // rounding; default 2 (6 for gps)

	// random_walk and counter
	Start  float64  `yaml:"start"`
	Step   float64  `yaml:"step"`   // random_walk: largest change per sample; counter: mean increment
	Min    *float64 `yaml:"min"`    // random_walk bounds
	Max    *float64 `yaml:"max"`    //
	Toward string   `yaml:"toward"` // random_walk: a numeric setting the value is pulled toward
	Pull   float64  `yaml:"pull"`   // share of the distance to Toward closed per sample

	// sine
	Base      float64       `yaml:"base"`
	Amplitude float64       `yaml:"amplitude"`
	Period    time.Duration `yaml:"period"`
	Noise     float64       `yaml:"noise"` // sine and counter: standard deviation of added noise

	// step: cycles through Values, holding each for Every
	Values []any         `yaml:"values"`
	Every  time.Duration `yaml:"every"`

	// gps: a vehicle wandering around Center; emits lat, lon, speed, heading
	Center   []float64 `yaml:"center"` // [lat, lon]
	RadiusKM float64   `yaml:"radius_km"`
	SpeedKMH float64   `yaml:"speed_kmh"`
}

// Metric kinds.
const (
	KindRandomWalk = "random_walk"
	KindSine       = "sine"
	KindStep       = "step"
	KindCounter    = "counter"
	KindGPS        = "gps"
)

// gpsKeys are the telemetry keys a gps metric writes.
var gpsKeys = []string{"lat", "lon", "speed", "heading"}

//go:embed profiles.yaml
var defaultFleetYAML []byte

// DefaultFleet returns the built-in fleet: thermostats, power meters and
// GPS trackers (the same profiles as configs/fleet.example.yaml).
func DefaultFleet() *Fleet {
	f, err := ParseFleet(bytes.NewReader(defaultFleetYAML))
	if err != nil {
		panic("simulator: built-in profiles.yaml: " + err.Error())
	}
	return f
}

// LoadFleet picks the fleet for --profile: "" is the built-in fleet, a
// path to an existing file is read as a fleet file, and otherwise the
// value names one built-in profile.
func LoadFleet(nameOrPath string) (*Fleet, error) {
	if nameOrPath == "" {
		return DefaultFleet(), nil
	}
	if f, err := os.Open(nameOrPath); err == nil {
		defer f.Close()
		fleet, err := ParseFleet(f)
		if err != nil {
			return nil, fmt.Errorf("load fleet %s: %w", nameOrPath, err)
		}
		return fleet, nil
	} else if !errors.Is(err, os.ErrNotExist) || strings.ContainsAny(nameOrPath, `/\.`) {
		return nil, fmt.Errorf("load fleet: %w", err)
	}
	return DefaultFleet().Select(nameOrPath)
}

// ParseFleet reads a fleet file, fills defaults and validates it. Unknown
// keys are errors, so a misspelt key is not silently ignored.
func ParseFleet(r io.Reader) (*Fleet, error) {
	data, err := io.ReadAll(io.LimitReader(r, 1<<20+1))
	if err != nil {
		return nil, fmt.Errorf("parse fleet: %w", err)
	}
	if len(data) > 1<<20 {
		return nil, errors.New("parse fleet: file larger than 1 MiB")
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f Fleet
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("parse fleet: empty file")
		}
		return nil, fmt.Errorf("parse fleet: %w", err)
	}
	f.setDefaults()
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("parse fleet: %w", err)
	}
	return &f, nil
}

func (f *Fleet) setDefaults() {
	for i := range f.Profiles {
		p := &f.Profiles[i]
		if p.Type == "" {
			p.Type = p.Name
		}
		if p.Weight == 0 {
			p.Weight = 1
		}
		if p.Interval == 0 {
			p.Interval = 10 * time.Second
		}
		if p.Commands.RebootDowntime == 0 {
			p.Commands.RebootDowntime = 5 * time.Second
		}
		for j := range p.Metrics {
			m := &p.Metrics[j]
			if m.Decimals == nil {
				d := 2
				if m.Kind == KindGPS {
					d = 6
				}
				m.Decimals = &d
			}
		}
	}
}

// Validate checks the fleet; its errors name the profile and key.
func (f *Fleet) Validate() error {
	if len(f.Profiles) == 0 {
		return errors.New("profiles: at least one profile is needed")
	}
	names := map[string]bool{}
	total := 0
	for i := range f.Profiles {
		p := &f.Profiles[i]
		at := fmt.Sprintf("profiles[%d]", i)
		if p.Name != "" {
			at += " (" + p.Name + ")"
		}
		if err := p.validate(); err != nil {
			return fmt.Errorf("%s: %w", at, err)
		}
		if names[p.Name] {
			return fmt.Errorf("%s: name: duplicate profile name", at)
		}
		names[p.Name] = true
		total += p.Weight
	}
	if total <= 0 {
		return errors.New("profiles: the weights add up to zero")
	}
	return nil
}

func (p *Profile) validate() error {
	switch {
	case !ValidDeviceID(p.Name):
		return fmt.Errorf("name: %q is not a name of [A-Za-z0-9._-]{1,128}", p.Name)
	case p.Weight < 0 || p.Weight > 1_000_000:
		return fmt.Errorf("weight: %d is outside 0..1000000", p.Weight)
	case p.Interval < 10*time.Millisecond || p.Interval > 24*time.Hour:
		return fmt.Errorf("interval: %s is outside 10ms..24h (write units, e.g. 10s)", p.Interval)
	case len(p.Metrics) == 0:
		return errors.New("metrics: at least one metric is needed")
	}
	if _, err := json.Marshal(p.Settings); err != nil {
		return fmt.Errorf("settings: not a JSON object: %w", err)
	}
	if err := p.Commands.validate(); err != nil {
		return fmt.Errorf("commands: %w", err)
	}
	if w := p.Will; w != nil && (w.Topic == "" || strings.ContainsAny(w.Topic, "+#") || w.QoS > 2) {
		return errors.New("will: needs a topic without wildcards and qos 0, 1 or 2")
	}
	keys := map[string]bool{"ts": true}
	for j := range p.Metrics {
		m := &p.Metrics[j]
		at := fmt.Sprintf("metrics[%d]", j)
		if m.Name != "" {
			at += " (" + m.Name + ")"
		}
		if err := m.validate(); err != nil {
			return fmt.Errorf("%s: %w", at, err)
		}
		for _, k := range m.keys() {
			if keys[k] {
				return fmt.Errorf("%s: telemetry key %q is used twice (or is the reserved ts)", at, k)
			}
			keys[k] = true
		}
	}
	return nil
}

func (b *Behaviour) validate() error {
	switch {
	case !ratio(b.FailRatio) || !ratio(b.IgnoreRatio) || b.FailRatio+b.IgnoreRatio > 1:
		return errors.New("fail_ratio and ignore_ratio must be in 0..1 and add up to at most 1")
	case b.Delay < 0 || b.Delay > time.Minute:
		return fmt.Errorf("delay: %s is outside 0..1m", b.Delay)
	case b.RebootDowntime < 0 || b.RebootDowntime > time.Hour:
		return fmt.Errorf("reboot_downtime: %s is outside 0..1h", b.RebootDowntime)
	}
	for _, a := range b.Accept {
		if a == "" || strings.ContainsAny(a, "/+#") {
			return fmt.Errorf("accept: %q is not a command name", a)
		}
	}
	return nil
}

func ratio(v float64) bool { return v >= 0 && v <= 1 }

// finite reports whether all values are finite numbers of sane size.
func finite(vs ...float64) bool {
	for _, v := range vs {
		if !(v > -1e12 && v < 1e12) {
			return false
		}
	}
	return true
}

func (m *Metric) validate() error {
	if m.Kind != KindGPS && !ValidDeviceID(m.Name) {
		return fmt.Errorf("name: %q is not a name of [A-Za-z0-9._-]{1,128}", m.Name)
	}
	if m.Decimals != nil && (*m.Decimals < 0 || *m.Decimals > 9) {
		return fmt.Errorf("decimals: %d is outside 0..9", *m.Decimals)
	}
	if !finite(m.Start, m.Step, m.Pull, m.Base, m.Amplitude, m.Noise, m.RadiusKM, m.SpeedKMH) {
		return errors.New("a number is not finite or is larger than 1e12")
	}
	switch m.Kind {
	case KindRandomWalk:
		if m.Step < 0 {
			return errors.New("step: must not be negative")
		}
		if m.Min != nil && m.Max != nil && *m.Min > *m.Max {
			return errors.New("min: greater than max")
		}
		if (m.Min != nil && !finite(*m.Min)) || (m.Max != nil && !finite(*m.Max)) {
			return errors.New("min, max: not finite")
		}
		if !ratio(m.Pull) {
			return errors.New("pull: must be in 0..1")
		}
	case KindSine:
		if m.Period <= 0 {
			return errors.New("period: must be positive (write units, e.g. 1h)")
		}
		if m.Noise < 0 {
			return errors.New("noise: must not be negative")
		}
	case KindStep:
		if len(m.Values) == 0 || m.Every <= 0 {
			return errors.New("values and every: need at least one value and a positive every")
		}
		if _, err := json.Marshal(m.Values); err != nil {
			return fmt.Errorf("values: not JSON values: %w", err)
		}
	case KindCounter:
		if m.Step < 0 || m.Noise < 0 {
			return errors.New("step, noise: must not be negative")
		}
	case KindGPS:
		if len(m.Center) != 2 || !finite(m.Center...) || m.Center[0] < -90 || m.Center[0] > 90 || m.Center[1] < -180 || m.Center[1] > 180 {
			return errors.New("center: must be [lat, lon] with lat in -90..90 and lon in -180..180")
		}
		if m.RadiusKM <= 0 || m.RadiusKM > 1000 || m.SpeedKMH < 0 || m.SpeedKMH > 1000 {
			return errors.New("radius_km and speed_kmh: must be in (0, 1000] and [0, 1000]")
		}
	default:
		return fmt.Errorf("kind: %q is not one of random_walk, sine, step, counter, gps", m.Kind)
	}
	return nil
}

// keys returns the telemetry keys the metric writes.
func (m *Metric) keys() []string {
	if m.Kind == KindGPS {
		return gpsKeys
	}
	return []string{m.Name}
}

// Names returns the profile names, sorted.
func (f *Fleet) Names() []string {
	names := make([]string, len(f.Profiles))
	for i, p := range f.Profiles {
		names[i] = p.Name
	}
	sort.Strings(names)
	return names
}

// Select returns a fleet of the one profile called name.
func (f *Fleet) Select(name string) (*Fleet, error) {
	for _, p := range f.Profiles {
		if p.Name == name {
			p.Weight = 1
			return &Fleet{Profiles: []Profile{p}}, nil
		}
	}
	return nil, fmt.Errorf("select profile %q: no such file or built-in profile (built-in: %s)", name, strings.Join(f.Names(), ", "))
}

// Assign returns the profile of each of n devices, spread by weight and
// interleaved (smooth weighted round robin), the same for the same fleet.
func (f *Fleet) Assign(n int) []*Profile {
	out := make([]*Profile, n)
	current := make([]int, len(f.Profiles))
	total := 0
	for _, p := range f.Profiles {
		total += p.Weight
	}
	for i := range out {
		best := -1
		for j, p := range f.Profiles {
			current[j] += p.Weight
			if p.Weight > 0 && (best < 0 || current[j] > current[best]) {
				best = j
			}
		}
		current[best] -= total
		out[i] = &f.Profiles[best]
	}
	return out
}
