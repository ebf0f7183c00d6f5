package simulator

import (
	"math"
	"math/rand/v2"
	"time"
)

// generator makes one metric's values for one device. It is owned by the
// device's goroutine.
type generator interface {
	// sample writes the metric's value(s) at now into out. settings is the
	// device's reported twin state.
	sample(now time.Time, settings map[string]any, out map[string]any)
}

// newGenerator returns a generator for m with state of its own, started
// at a random phase so that devices of a profile differ.
func newGenerator(m *Metric, rng *rand.Rand, start time.Time) generator {
	dec := 2
	if m.Decimals != nil {
		dec = *m.Decimals
	}
	r := rounder(math.Pow10(dec))
	switch m.Kind {
	case KindRandomWalk:
		return &randomWalk{m: m, rng: rng, round: r, v: m.Start}
	case KindSine:
		return &sine{m: m, rng: rng, round: r, phase: rng.Float64() * 2 * math.Pi, start: start}
	case KindStep:
		return &step{m: m, round: r, offset: rng.IntN(len(m.Values)), start: start}
	case KindCounter:
		return &counter{m: m, rng: rng, round: r, v: m.Start}
	case KindGPS:
		g := &gps{m: m, rng: rng, round: r, heading: rng.Float64() * 360, last: start}
		// Start somewhere within the radius.
		g.lat, g.lon = offset(m.Center[0], m.Center[1], rng.Float64()*m.RadiusKM, rng.Float64()*360)
		return g
	}
	return nil
}

// rounder rounds to a number of decimals given as a power of ten.
type rounder float64

func (r rounder) round(v float64) float64 {
	if x := math.Round(v*float64(r)) / float64(r); !math.IsInf(x, 0) && !math.IsNaN(x) {
		return x
	}
	return v
}

// randomWalk moves by up to Step each sample, within [Min, Max], pulled
// toward the numeric setting named by Toward if the device has it.
type randomWalk struct {
	m     *Metric
	rng   *rand.Rand
	round rounder
	v     float64
}

func (g *randomWalk) sample(_ time.Time, settings map[string]any, out map[string]any) {
	g.v += (g.rng.Float64()*2 - 1) * g.m.Step
	if g.m.Toward != "" {
		if target, ok := number(settings[g.m.Toward]); ok && finite(target) {
			g.v += (target - g.v) * g.m.Pull
		}
	}
	if g.m.Min != nil && g.v < *g.m.Min {
		g.v = *g.m.Min
	}
	if g.m.Max != nil && g.v > *g.m.Max {
		g.v = *g.m.Max
	}
	out[g.m.Name] = g.round.round(g.v)
}

// sine is Base + Amplitude·sin(2πt/Period + phase) + noise.
type sine struct {
	m     *Metric
	rng   *rand.Rand
	round rounder
	phase float64
	start time.Time
}

func (g *sine) sample(now time.Time, _ map[string]any, out map[string]any) {
	t := now.Sub(g.start).Seconds() / g.m.Period.Seconds()
	v := g.m.Base + g.m.Amplitude*math.Sin(2*math.Pi*t+g.phase) + g.rng.NormFloat64()*g.m.Noise
	out[g.m.Name] = g.round.round(v)
}

// step holds each of Values for Every, cycling.
type step struct {
	m      *Metric
	round  rounder
	offset int
	start  time.Time
}

func (g *step) sample(now time.Time, _ map[string]any, out map[string]any) {
	i := (int(now.Sub(g.start)/g.m.Every) + g.offset) % len(g.m.Values)
	if i < 0 {
		i += len(g.m.Values)
	}
	v := g.m.Values[i]
	if f, ok := v.(float64); ok {
		v = g.round.round(f)
	}
	out[g.m.Name] = v
}

// counter grows by Step (± Noise, never negative) each sample.
type counter struct {
	m     *Metric
	rng   *rand.Rand
	round rounder
	v     float64
}

func (g *counter) sample(_ time.Time, _ map[string]any, out map[string]any) {
	g.v += math.Max(0, g.m.Step+g.rng.NormFloat64()*g.m.Noise)
	out[g.m.Name] = g.round.round(g.v)
}

// gps drives at about SpeedKMH, turning a little each sample and heading
// back toward Center when it would leave RadiusKM.
type gps struct {
	m        *Metric
	rng      *rand.Rand
	round    rounder
	lat, lon float64
	heading  float64 // degrees clockwise from north
	last     time.Time
}

func (g *gps) sample(now time.Time, _ map[string]any, out map[string]any) {
	dt := now.Sub(g.last).Hours()
	g.last = now
	speed := math.Max(0, g.m.SpeedKMH*(0.7+0.6*g.rng.Float64()))
	g.heading = math.Mod(g.heading+g.rng.NormFloat64()*20+360, 360)
	if distanceKM(g.lat, g.lon, g.m.Center[0], g.m.Center[1]) > g.m.RadiusKM {
		g.heading = bearing(g.lat, g.lon, g.m.Center[0], g.m.Center[1])
	}
	if dt > 0 {
		g.lat, g.lon = offset(g.lat, g.lon, speed*dt, g.heading)
	}
	out["lat"] = g.round.round(g.lat)
	out["lon"] = g.round.round(g.lon)
	out["speed"] = math.Round(speed*10) / 10
	out["heading"] = math.Round(g.heading)
}

const earthKM = 6371.0

// offset moves from (lat, lon) by km along heading (degrees).
func offset(lat, lon, km, heading float64) (float64, float64) {
	φ, λ, θ, δ := rad(lat), rad(lon), rad(heading), km/earthKM
	φ2 := math.Asin(math.Sin(φ)*math.Cos(δ) + math.Cos(φ)*math.Sin(δ)*math.Cos(θ))
	λ2 := λ + math.Atan2(math.Sin(θ)*math.Sin(δ)*math.Cos(φ), math.Cos(δ)-math.Sin(φ)*math.Sin(φ2))
	return deg(φ2), math.Mod(deg(λ2)+540, 360) - 180
}

// distanceKM is the haversine distance.
func distanceKM(lat1, lon1, lat2, lon2 float64) float64 {
	dφ, dλ := rad(lat2-lat1), rad(lon2-lon1)
	a := math.Sin(dφ/2)*math.Sin(dφ/2) + math.Cos(rad(lat1))*math.Cos(rad(lat2))*math.Sin(dλ/2)*math.Sin(dλ/2)
	return 2 * earthKM * math.Asin(math.Min(1, math.Sqrt(a)))
}

// bearing is the initial heading from the first point to the second.
func bearing(lat1, lon1, lat2, lon2 float64) float64 {
	φ1, φ2, dλ := rad(lat1), rad(lat2), rad(lon2-lon1)
	y := math.Sin(dλ) * math.Cos(φ2)
	x := math.Cos(φ1)*math.Sin(φ2) - math.Sin(φ1)*math.Cos(φ2)*math.Cos(dλ)
	return math.Mod(deg(math.Atan2(y, x))+360, 360)
}

func rad(d float64) float64 { return d * math.Pi / 180 }
func deg(r float64) float64 { return r * 180 / math.Pi }

// number reads a numeric setting, from YAML (int, float64) or JSON (float64).
func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case int:
		return float64(n), true
	}
	return 0, false
}
