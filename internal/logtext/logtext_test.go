package logtext

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestShort(t *testing.T) {
	long := strings.Repeat("a", Max+1)
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"devices/d1/telemetry", "devices/d1/telemetry"},
		{strings.Repeat("a", Max), strings.Repeat("a", Max)},
		{long, strings.Repeat("a", Max) + "…(201 bytes)"},
		// A character across the cut is dropped whole.
		{strings.Repeat("a", Max-1) + "é" + "zz", strings.Repeat("a", Max-1) + "…(203 bytes)"},
	} {
		if got := Short(c.in); got != c.want {
			t.Errorf("Short(%.20q…) = %q, want %q", c.in, got, c.want)
		}
	}
	if got := Short("\xff" + long); !utf8.ValidString(got) {
		t.Errorf("Short kept invalid UTF-8: %q", got)
	}
}
