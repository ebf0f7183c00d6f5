package devices

import "strconv"

// parseNumber parses a JSON number as strconv.ParseFloat does, bit for
// bit. A short decimal (at most 15 significant digits, at most 15 after
// the point, no exponent), which is what sensors send, is read without
// strconv: its digits are an integer below 2^53 and a power of ten up to
// 10^15, both exact in a float64, so one division rounds correctly
// (Clinger's fast path). Anything else goes to strconv.
func parseNumber(v []byte) (float64, error) {
	i, neg := 0, false
	if len(v) > 0 && v[0] == '-' {
		neg, i = true, 1
	}
	var m uint64
	digits, frac, dot := 0, 0, false
	for ; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= '0' && c <= '9':
			if digits > 0 || c != '0' {
				digits++
			}
			m = m*10 + uint64(c-'0')
			if dot {
				frac++
			}
		case c == '.' && !dot && i > 0 && i+1 < len(v):
			dot = true
		default:
			return strconv.ParseFloat(string(v), 64)
		}
	}
	if digits > 15 || frac > 15 || i == 0 || (neg && len(v) == 1) {
		return strconv.ParseFloat(string(v), 64)
	}
	f := float64(m)
	if frac > 0 {
		f /= pow10[frac]
	}
	if neg {
		f = -f
	}
	return f, nil
}
