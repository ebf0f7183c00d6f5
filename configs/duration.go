package configs

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// days matches a number of days inside a duration: the 7d of "7d" or of
// "1d12h". No unit of time.ParseDuration contains a d.
var days = regexp.MustCompile(`(\d+(?:\.\d+)?)d`)

// ParseDuration is time.ParseDuration that also takes days ("7d", "1d12h",
// "1.5d"), a day being 24 hours. Configuration keys, their TETHER_*
// variables and the command line's duration flags all parse with it.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var bad error
	hours := days.ReplaceAllStringFunc(s, func(m string) string {
		n, err := strconv.ParseFloat(strings.TrimSuffix(m, "d"), 64)
		if err != nil || n > 1e6 {
			bad = fmt.Errorf("%q is not a duration such as 10s, 5m, 12h or 7d", s)
		}
		return strconv.FormatFloat(n*24, 'f', -1, 64) + "h"
	})
	if bad != nil {
		return 0, bad
	}
	d, err := time.ParseDuration(hours)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as 10s, 5m, 12h or 7d", s)
	}
	return d, nil
}

// DurationFlag is a flag.Value for a duration that also takes days.
type DurationFlag struct{ D *time.Duration }

// String returns the duration in Go's notation, or "" for none (so that
// flag's usage shows no "(default 0s)").
func (f DurationFlag) String() string {
	if f.D == nil || *f.D == 0 {
		return ""
	}
	return f.D.String()
}

// Set parses s with ParseDuration.
func (f DurationFlag) Set(s string) error {
	d, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*f.D = d
	return nil
}
