package logtext

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Max is how many bytes of a text Short keeps.
const Max = 200

// Short returns s if it is at most Max bytes long; otherwise its first
// Max bytes or fewer (cut at a character boundary) and "…(N bytes)", N
// the whole length. Invalid UTF-8 in what is kept is dropped.
func Short(s string) string {
	if len(s) <= Max {
		return s
	}
	cut := Max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strings.ToValidUTF8(s[:cut], "") + "…(" + strconv.Itoa(len(s)) + " bytes)"
}
