package simulator

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// newTestDevice makes a device's generators and settings without a client.
func newTestDevice(p *Profile, seed uint64) *device {
	d := &device{prof: p, rng: rand.New(rand.NewPCG(seed, 0)), settings: map[string]any{}}
	for k, v := range p.Settings {
		d.settings[k] = v
	}
	for i := range p.Metrics {
		d.gens = append(d.gens, newGenerator(&p.Metrics[i], d.rng, time.Unix(0, 0)))
	}
	return d
}

func sample(g generator, at time.Time, settings map[string]any) map[string]any {
	out := map[string]any{}
	g.sample(at, settings, out)
	return out
}

func TestRandomWalk(t *testing.T) {
	lo, hi, dec := 10.0, 12.0, 1
	m := &Metric{Name: "v", Kind: KindRandomWalk, Start: 11, Step: 5, Min: &lo, Max: &hi, Decimals: &dec}
	g := newGenerator(m, rand.New(rand.NewPCG(1, 1)), time.Unix(0, 0))
	for range 100 {
		v := sample(g, time.Now(), nil)["v"].(float64)
		if v < lo || v > hi || v != math.Round(v*10)/10 {
			t.Fatalf("value %v outside [%v, %v] or not rounded", v, lo, hi)
		}
	}
	pull := &Metric{Name: "v", Kind: KindRandomWalk, Start: 0, Step: 0.1, Toward: "sp", Pull: 0.5, Decimals: &dec}
	g = newGenerator(pull, rand.New(rand.NewPCG(1, 1)), time.Unix(0, 0))
	var v float64
	for range 50 {
		v = sample(g, time.Now(), map[string]any{"sp": 30.0})["v"].(float64)
	}
	if math.Abs(v-30) > 1 {
		t.Fatalf("walk pulled toward 30 ended at %v", v)
	}
}

func TestSineStepCounter(t *testing.T) {
	dec := 3
	start := time.Unix(0, 0)
	rng := rand.New(rand.NewPCG(1, 1))
	sine := newGenerator(&Metric{Name: "s", Kind: KindSine, Base: 10, Amplitude: 2, Period: time.Hour, Decimals: &dec}, rng, start)
	for i := range 60 {
		v := sample(sine, start.Add(time.Duration(i)*time.Minute), nil)["s"].(float64)
		if v < 8 || v > 12 {
			t.Fatalf("sine %v outside base ± amplitude", v)
		}
	}
	step := &step{m: &Metric{Name: "m", Values: []any{"a", "b", "c"}, Every: time.Minute}, start: start}
	got := ""
	for i := range 4 {
		got += sample(step, start.Add(time.Duration(i)*time.Minute), nil)["m"].(string)
	}
	if got != "abca" {
		t.Fatalf("step cycled %q, want abca", got)
	}
	counter := newGenerator(&Metric{Name: "c", Kind: KindCounter, Start: 5, Step: 1, Noise: 2, Decimals: &dec}, rng, start)
	last := 5.0
	for range 100 {
		v := sample(counter, start, nil)["c"].(float64)
		if v < last {
			t.Fatalf("counter went down: %v after %v", v, last)
		}
		last = v
	}
}

func TestGPSStaysNearCenter(t *testing.T) {
	dec := 6
	m := &Metric{Kind: KindGPS, Center: []float64{52.52, 13.405}, RadiusKM: 2, SpeedKMH: 60, Decimals: &dec}
	start := time.Unix(0, 0)
	g := newGenerator(m, rand.New(rand.NewPCG(3, 3)), start)
	for i := range 500 {
		out := sample(g, start.Add(time.Duration(i)*10*time.Second), nil)
		lat, lon := out["lat"].(float64), out["lon"].(float64)
		if d := distanceKM(lat, lon, 52.52, 13.405); d > 2+60.0*1.3/360 {
			t.Fatalf("sample %d: %.3f km from the center", i, d)
		}
		if _, ok := out["speed"].(float64); !ok {
			t.Fatal("no speed")
		}
	}
}
