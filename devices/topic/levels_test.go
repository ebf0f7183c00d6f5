package topic

import "testing"

func TestLevels(t *testing.T) {
	for _, tt := range []struct {
		topic  string
		levels int
	}{{"", 1}, {"a", 1}, {"/a", 2}, {"a/b/c", 3}, {"a/", 2}, {"a/+/#", 3}} {
		if got := Levels(tt.topic); got != tt.levels {
			t.Errorf("Levels(%q) = %d, want %d", tt.topic, got, tt.levels)
		}
		if TooDeep(tt.topic, tt.levels) || !TooDeep(tt.topic, tt.levels-1) && tt.levels > 1 || TooDeep(tt.topic, 0) {
			t.Errorf("TooDeep(%q) with %d levels", tt.topic, tt.levels)
		}
	}
}

func TestUnshare(t *testing.T) {
	for in, want := range map[string]string{
		"$share/g/a/b": "a/b", "$SHARE/g/a": "a", "$share/g/": "", "$share/g": "$share/g", "$share": "$share",
		"a/b": "a/b", "$shared/g/a": "$shared/g/a", "share/g/a": "share/g/a", "$sys/x": "$sys/x",
	} {
		if got := Unshare(in); got != want {
			t.Errorf("Unshare(%q) = %q, want %q", in, got, want)
		}
	}
}
