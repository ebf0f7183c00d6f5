package simulator

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseFleetErrors(t *testing.T) {
	const metric = "\n    metrics: [{name: t, kind: sine, period: 1m}]"
	tests := []struct {
		name, yaml, want string
	}{
		{"empty", "", "empty file"},
		{"no profiles", "profiles: []", "at least one profile"},
		{"unknown key", "profiles:\n  - name: a\n    colour: red" + metric, "line 3: field colour not found"},
		{"bad name", "profiles:\n  - name: 'a b'" + metric, "profiles[0] (a b): name"},
		{"duplicate", "profiles:\n  - name: a" + metric + "\n  - name: a" + metric, "profiles[1] (a): name: duplicate"},
		{"interval units", "profiles:\n  - name: a\n    interval: 10" + metric, "line 3: cannot unmarshal !!int `10` into time.Duration"},
		{"no metrics", "profiles:\n  - name: a", "metrics: at least one"},
		{"bad kind", "profiles:\n  - name: a\n    metrics: [{name: t, kind: noise}]", `metrics[0] (t): kind: "noise"`},
		{"sine period", "profiles:\n  - name: a\n    metrics: [{name: t, kind: sine}]", "period: must be positive"},
		{"walk bounds", "profiles:\n  - name: a\n    metrics: [{name: t, kind: random_walk, min: 5, max: 1}]", "min: greater than max"},
		{"step values", "profiles:\n  - name: a\n    metrics: [{name: t, kind: step, every: 1s}]", "values and every"},
		{"gps center", "profiles:\n  - name: a\n    metrics: [{kind: gps, center: [95, 0], radius_km: 1}]", "center:"},
		{"key twice", "profiles:\n  - name: a\n    metrics: [{kind: gps, center: [1, 1], radius_km: 1}, {name: lat, kind: counter}]", `key "lat" is used twice`},
		{"reserved ts", "profiles:\n  - name: a\n    metrics: [{name: ts, kind: counter}]", `key "ts"`},
		{"ratios", "profiles:\n  - name: a" + metric + "\n    commands: {fail_ratio: 0.7, ignore_ratio: 0.5}", "add up to at most 1"},
		{"will wildcard", "profiles:\n  - name: a" + metric + "\n    will: {topic: 'devices/#'}", "will:"},
		{"not finite", "profiles:\n  - name: a\n    metrics: [{name: t, kind: counter, step: .inf}]", "not finite"},
		{"bad yaml", "profiles: [", "parse fleet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFleet(strings.NewReader(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseFleetDefaults(t *testing.T) {
	f, err := ParseFleet(strings.NewReader("profiles:\n  - name: a\n    metrics: [{name: t, kind: counter}, {kind: gps, center: [1, 2], radius_km: 3}]"))
	if err != nil {
		t.Fatal(err)
	}
	p := f.Profiles[0]
	if p.Type != "a" || p.Weight != 1 || p.Interval != 10*time.Second || p.Commands.RebootDowntime != 5*time.Second {
		t.Fatalf("defaults not filled: %+v", p)
	}
	if *p.Metrics[0].Decimals != 2 || *p.Metrics[1].Decimals != 6 {
		t.Fatalf("decimals defaults: %d %d", *p.Metrics[0].Decimals, *p.Metrics[1].Decimals)
	}
}

// The shipped example is the built-in fleet, and every shipped fleet file
// parses.
func TestShippedFleets(t *testing.T) {
	example, err := os.ReadFile("../configs/fleet.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(example, defaultFleetYAML) {
		t.Fatal("configs/fleet.example.yaml and simulator/profiles.yaml differ; copy one over the other")
	}
	files, _ := filepath.Glob("../configs/fleet*.yaml")
	for _, name := range files {
		if _, err := LoadFleet(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if got := strings.Join(DefaultFleet().Names(), ","); got != "gps-tracker,power-meter,thermostat" {
		t.Fatalf("built-in profiles %s", got)
	}
}

func TestLoadFleet(t *testing.T) {
	f, err := LoadFleet("thermostat")
	if err != nil || len(f.Profiles) != 1 || f.Profiles[0].Name != "thermostat" {
		t.Fatalf("LoadFleet(thermostat) = %v, %v", f, err)
	}
	if _, err := LoadFleet("toaster"); err == nil || !strings.Contains(err.Error(), "built-in: gps-tracker, power-meter, thermostat") {
		t.Fatalf("unknown profile: %v", err)
	}
	if _, err := LoadFleet("missing.yaml"); err == nil {
		t.Fatal("missing file: no error")
	}
}

func TestAssign(t *testing.T) {
	got := map[string]int{}
	order := ""
	for i, p := range DefaultFleet().Assign(20) {
		got[p.Name]++
		if i < 5 {
			order += p.Name[:1]
		}
	}
	if got["thermostat"] != 10 || got["power-meter"] != 6 || got["gps-tracker"] != 4 {
		t.Fatalf("assigned %v, want 10/6/4", got)
	}
	if order == "ttttt" {
		t.Fatal("profiles not interleaved")
	}
}

// FuzzProfile feeds fleet files to the parser; whatever it accepts must
// make generators whose samples encode as JSON.
func FuzzProfile(f *testing.F) {
	f.Add(defaultFleetYAML)
	f.Add([]byte(testFleet))
	f.Fuzz(func(t *testing.T, data []byte) {
		fleet, err := ParseFleet(bytes.NewReader(data))
		if err != nil {
			return
		}
		if err := fleet.Validate(); err != nil {
			t.Fatalf("parsed fleet does not validate: %v", err)
		}
		start := time.Unix(1700000000, 0)
		for i := range fleet.Profiles {
			p := &fleet.Profiles[i]
			d := newTestDevice(p, 1)
			for s := range 3 {
				out := map[string]any{}
				for _, g := range d.gens {
					g.sample(start.Add(time.Duration(s)*time.Minute), d.settings, out)
				}
				if _, err := json.Marshal(out); err != nil {
					t.Fatalf("profile %s: sample %v: %v", p.Name, out, err)
				}
			}
		}
	})
}
