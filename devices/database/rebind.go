package database

import "strconv"

// Rebind turns SQLite's placeholders into PostgreSQL's: each `?` becomes
// $1, $2, ... in order, and a numbered `?N` becomes $N (after which a bare
// `?` counts on from the highest number seen, as in SQLite). Question marks
// inside quoted strings ('...'), quoted identifiers ("..."), comments
// (-- and /* */) and PostgreSQL's dollar-quoted strings ($tag$...$tag$)
// are left alone. A query without placeholders comes back unchanged.
//
// So a statement never uses PostgreSQL's jsonb operators spelled with a
// question mark (?, ?|, ?&: call jsonb_exists and friends instead), nor
// E'...' strings, whose backslash-escaped quotes Rebind does not know.
func Rebind(q string) string {
	var b []byte // nil until the first placeholder
	last := 0    // bytes of q copied into b
	n := 0       // highest placeholder number so far
	for i := 0; i < len(q); {
		switch c := q[i]; {
		case c == '\'' || c == '"':
			i = skipQuoted(q, i, c)
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			i = skipLine(q, i)
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			i = skipBlock(q, i)
		case c == '$' && (i == 0 || !identChar(q[i-1])):
			i = skipDollar(q, i)
		case c == '?':
			j := i + 1
			for j < len(q) && q[j] >= '0' && q[j] <= '9' {
				j++
			}
			num := n + 1
			if j > i+1 {
				v, err := strconv.Atoi(q[i+1 : j])
				if err != nil || v == 0 {
					// Not a placeholder SQLite accepts; leave it for the
					// server to refuse.
					i = j
					continue
				}
				num = v
			}
			if num > n {
				n = num
			}
			b = append(b, q[last:i]...)
			b = append(b, '$')
			b = strconv.AppendInt(b, int64(num), 10)
			last, i = j, j
		default:
			i++
		}
	}
	if b == nil {
		return q
	}
	return string(append(b, q[last:]...))
}

// skipQuoted returns the index after the quoted run starting at q[i]
// (quote; a doubled quote stands for itself), or len(q) if it is open.
func skipQuoted(q string, i int, quote byte) int {
	for j := i + 1; j < len(q); j++ {
		if q[j] == quote {
			if j+1 < len(q) && q[j+1] == quote {
				j++
				continue
			}
			return j + 1
		}
	}
	return len(q)
}

// skipLine returns the index after the -- comment starting at q[i].
func skipLine(q string, i int) int {
	for j := i + 2; j < len(q); j++ {
		if q[j] == '\n' {
			return j + 1
		}
	}
	return len(q)
}

// skipBlock returns the index after the /* */ comment starting at q[i].
func skipBlock(q string, i int) int {
	for j := i + 2; j+1 < len(q); j++ {
		if q[j] == '*' && q[j+1] == '/' {
			return j + 2
		}
	}
	return len(q)
}

// skipDollar returns the index after the dollar-quoted string starting at
// q[i] ($$...$$ or $tag$...$tag$), or i+1 if q[i] starts none (a $1).
func skipDollar(q string, i int) int {
	j := i + 1
	for j < len(q) && q[j] != '$' {
		c := q[j]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 || j > i+1 && c >= '0' && c <= '9') {
			return i + 1
		}
		j++
	}
	if j >= len(q) {
		return i + 1
	}
	tag := q[i : j+1]
	for k := j + 1; k+len(tag) <= len(q); k++ {
		if q[k:k+len(tag)] == tag {
			return k + len(tag)
		}
	}
	return len(q)
}

// identChar reports a byte that continues an identifier (so a $ after it
// belongs to the identifier, not a dollar quote).
func identChar(c byte) bool {
	return c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}
