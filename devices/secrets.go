package devices

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strings"
	"time"
)

// newSecret returns 256 random bits, base64url without padding (43
// characters).
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// digest is the stored form of a secret or API token.
func digest(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// sameDigest compares in constant time.
func sameDigest(a, b [32]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

// randomID returns prefix and n random lower-case letters and digits.
func randomID(prefix string, n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	var sb strings.Builder
	sb.WriteString(prefix)
	for _, c := range b {
		sb.WriteByte(alphabet[int(c)%len(alphabet)])
	}
	return sb.String()
}

// fmtTime is how times are stored.
func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// parseTime reads a stored time. Besides RFC 3339 it accepts the layouts
// the SQLite driver writes for a bound time.Time, and Unix milliseconds,
// so a writer that binds a time.Time directly is still read right.
func parseTime(v any) (time.Time, bool) {
	switch v := v.(type) {
	case time.Time:
		return v.UTC(), true
	case int64:
		return time.UnixMilli(v).UTC(), true
	case []byte:
		return parseTime(string(v))
	case string:
		for _, layout := range []string{
			time.RFC3339Nano,
			"2006-01-02 15:04:05.999999999-07:00",
			"2006-01-02 15:04:05.999999999 -0700 MST",
			"2006-01-02T15:04:05.999999999-07:00",
			"2006-01-02 15:04:05",
		} {
			if t, err := time.Parse(layout, v); err == nil {
				return t.UTC(), true
			}
		}
	}
	return time.Time{}, false
}
