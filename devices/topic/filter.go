package topic

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxFilter bounds a topic filter in a device's grants or an auth rule
// (bytes, after nothing is substituted).
const MaxFilter = 256

// Check reports why f is not a valid MQTT topic filter
// [MQTT-4.7.1]: empty, not UTF-8, with a NUL, a '#' that is not a whole
// last level or a '+' that is not a whole level, or longer than MaxFilter.
func Check(f string) error {
	switch {
	case f == "":
		return fmt.Errorf("empty")
	case len(f) > MaxFilter:
		return fmt.Errorf("longer than %d bytes", MaxFilter)
	case !utf8.ValidString(f):
		return fmt.Errorf("not valid UTF-8")
	case strings.IndexByte(f, 0) >= 0:
		return fmt.Errorf("contains NUL")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return fmt.Errorf("'#' must be the last level")
		case l != "#" && strings.Contains(l, "#"):
			return fmt.Errorf("'#' must be a whole level")
		case l != "+" && strings.Contains(l, "+"):
			return fmt.Errorf("'+' must be a whole level")
		}
	}
	return nil
}

// Within reports whether every topic that filter matches is matched by
// pattern (both MQTT topic filters; a topic name is a filter without
// wildcards). "#" also matches its parent level [MQTT-4.7.1-2]. Neither
// is checked: give valid filters.
func Within(filter, pattern string) bool {
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		pl, prest, pmore := strings.Cut(pattern, "/")
		switch {
		case pl == "#":
			return true
		case fl == "#":
			return false
		case pl == "+":
			// any single level, "+" included
		case fl == "+" || fl != pl:
			return false
		}
		switch {
		case !fmore && !pmore:
			return true
		case !fmore:
			return prest == "#"
		case !pmore:
			return false
		}
		filter, pattern = frest, prest
	}
}

// Match reports whether filter matches the topic name: '+' matches one
// level, '#' the rest and its parent [MQTT-4.7.1-2], and a wildcard first
// level does not match a topic name starting with '$' [MQTT-4.7.2-1].
// Neither is checked: give a valid filter.
func Match(filter, name string) bool {
	if strings.HasPrefix(name, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(name, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore {
			return !tmore
		}
		if !tmore {
			return frest == "#"
		}
		filter, name = frest, trest
	}
}

// Overlap reports whether some topic matches both filters a and b.
func Overlap(a, b string) bool {
	for {
		al, arest, amore := strings.Cut(a, "/")
		bl, brest, bmore := strings.Cut(b, "/")
		switch {
		case al == "#" || bl == "#":
			return true
		case al != "+" && bl != "+" && al != bl:
			return false
		}
		switch {
		case !amore && !bmore:
			return true
		case !amore:
			return brest == "#"
		case !bmore:
			return arest == "#"
		}
		a, b = arest, brest
	}
}

// Split appends the levels of a topic name or filter to buf[:0] and
// returns them: no allocation when buf has room for them all.
func Split(s string, buf []string) []string {
	out := buf[:0]
	for {
		i := strings.IndexByte(s, '/')
		if i < 0 {
			return append(out, s)
		}
		out = append(out, s[:i])
		s = s[i+1:]
	}
}

// WithinLevels is Within on filters already split into levels (Split):
// what a check that runs for every message uses.
func WithinLevels(filter, pattern []string) bool {
	for i, pl := range pattern {
		if pl == "#" {
			return true
		}
		if i >= len(filter) {
			return false
		}
		fl := filter[i]
		if fl == "#" || pl != "+" && (fl == "+" || fl != pl) {
			return false
		}
	}
	return len(filter) == len(pattern)
}
