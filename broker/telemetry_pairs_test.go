package broker

import "testing"

// TestMedianCI: the paired routing benchmark's summary: the median of
// the pairs, and a bootstrap interval around it within the pairs' range,
// the same for the same pairs, a point where they all agree.
func TestMedianCI(t *testing.T) {
	xs := []float64{0.09, 0.01, 0.05, 0.03, 0.07, 0.02, 0.08, 0.04, 0.06}
	med, lo, hi := medianCI(xs)
	if med != 0.05 || lo > med || hi < med || lo < 0.01 || hi > 0.09 || lo == hi {
		t.Errorf("median %v, interval [%v, %v], want 0.05 inside an interval within [0.01, 0.09]", med, lo, hi)
	}
	if xs[0] != 0.09 {
		t.Error("the pairs were reordered")
	}
	if m2, lo2, hi2 := medianCI(xs); m2 != med || lo2 != lo || hi2 != hi {
		t.Errorf("again: %v [%v, %v], first %v [%v, %v]", m2, lo2, hi2, med, lo, hi)
	}
	if med, lo, hi := medianCI([]float64{0.03, 0.03, 0.03}); med != 0.03 || lo != 0.03 || hi != 0.03 {
		t.Errorf("equal pairs: %v [%v, %v]", med, lo, hi)
	}
	if med, _, _ := medianCI([]float64{0.04, 0.01}); med != 0.025 {
		t.Errorf("median of two: %v", med)
	}
}
