package devices

import (
	"math"
	"strconv"
	"testing"
)

// TestParseNumber: the fast path agrees with strconv bit for bit, and
// what it does not take goes to strconv.
func TestParseNumber(t *testing.T) {
	for _, s := range []string{
		"0", "-0", "0.0", "-0.0", "1", "-1", "21.5", "-273.15", "0.1", "0.3", "1.7976931348623157e308",
		"123456789012345", "1234567890123456", "12345678901234567890", "0.000000000000001",
		"0.0000000000000001", "999999999999999.9", "99999999999999.9", "9007199254740993",
		"1e3", "1E-3", "5e-324", "1e400", "-1e400", "NaN", "Inf", "+1", "", "-", ".", "1.", ".5",
		"00.5", "1..2", "1.2.3", "0x10", "1_0", "4.35", "45.67", "52.308961", "13.404954",
	} {
		got, gerr := parseNumber([]byte(s))
		want, werr := strconv.ParseFloat(s, 64)
		if (gerr == nil) != (werr == nil) || math.Float64bits(got) != math.Float64bits(want) {
			t.Errorf("parseNumber(%q) = %v, %v; strconv: %v, %v", s, got, gerr, want, werr)
		}
	}
}

// FuzzParseNumber: any input parses as strconv.ParseFloat parses it.
//
//	go test -run XXX -fuzz FuzzParseNumber ./devices/
func FuzzParseNumber(f *testing.F) {
	for _, s := range []string{"21.5", "-0", "0.1", "123456789012345", "1e3", "99999999999999.99", "-", "1."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, gerr := parseNumber([]byte(s))
		want, werr := strconv.ParseFloat(s, 64)
		if (gerr == nil) != (werr == nil) || math.Float64bits(got) != math.Float64bits(want) {
			t.Fatalf("parseNumber(%q) = %v, %v; strconv: %v, %v", s, got, gerr, want, werr)
		}
	})
}
