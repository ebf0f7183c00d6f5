package devices

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxID is the longest device id or user name.
const MaxID = 128

// ValidID reports whether s is a valid device id or user name:
// [A-Za-z0-9._-]{1,128}, and not only dots (it is a URL path segment).
// Such an id is safe in an MQTT topic level (no '/', '+', '#').
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxID || strings.Trim(s, ".") == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func checkID(field, s string) error {
	if !ValidID(s) {
		return invalid(field, "must be 1 to %d of A-Z a-z 0-9 . _ - (not only dots)", MaxID)
	}
	return nil
}

// checkText accepts printable UTF-8 up to max bytes.
func checkText(field, s string, max int) error {
	if len(s) > max {
		return invalid(field, "longer than %d bytes", max)
	}
	if !utf8.ValidString(s) {
		return invalid(field, "not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return invalid(field, "contains a control character")
		}
	}
	return nil
}

// checkLabels bounds a label set: at most MaxLabels, keys of
// [A-Za-z0-9._/-] up to MaxLabelKey bytes, printable values up to
// MaxLabelValue bytes.
func checkLabels(field string, labels map[string]string) error {
	if len(labels) > MaxLabels {
		return invalid(field, "more than %d labels", MaxLabels)
	}
	for k, v := range labels {
		if k == "" || len(k) > MaxLabelKey {
			return invalid(field, "key %q: must be 1 to %d bytes", k, MaxLabelKey)
		}
		for i := 0; i < len(k); i++ {
			c := k[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._/-", c) >= 0) {
				return invalid(field, "key %q: only A-Z a-z 0-9 . _ / - allowed", k)
			}
		}
		if err := checkText(field+"."+k, v, MaxLabelValue); err != nil {
			return err
		}
	}
	return nil
}

func checkRole(role string) error {
	if roleRank(role) == 0 {
		return invalid("role", "%q is not one of viewer, operator, admin", role)
	}
	return nil
}
