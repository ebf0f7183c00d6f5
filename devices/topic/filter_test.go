package topic

import "testing"

func TestCheck(t *testing.T) {
	for f, ok := range map[string]bool{
		"a": true, "a/b": true, "#": true, "+": true, "a/+/b": true, "a/#": true, "/": true, "+/+": true,
		"": false, "a/#/b": false, "a#": false, "a/b+": false, "a\x00": false, "\xff": false,
	} {
		if err := Check(f); (err == nil) != ok {
			t.Errorf("Check(%q) = %v, want ok=%v", f, err, ok)
		}
	}
}

func TestOverlap(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"a/b", "a/b", true},
		{"a/+", "a/b", true},
		{"a/#", "a", true},
		{"a/#", "b/#", false},
		{"+/b", "a/+", true},
		{"a/b/c", "a/b", false},
		{"devices/%c/#", "devices/%c/commands/#", true},
		{"devices/%c/telemetry", "devices/%c/commands/#", false},
		{"#", "x/y", true},
		{"a", "a/b", false},
	} {
		if got, back := Overlap(tt.a, tt.b), Overlap(tt.b, tt.a); got != tt.want || back != tt.want {
			t.Errorf("Overlap(%q, %q) = %v/%v, want %v", tt.a, tt.b, got, back, tt.want)
		}
	}
}

// TestWithinLevelsAgrees: the split form decides as Within does.
func TestWithinLevelsAgrees(t *testing.T) {
	fs := []string{"a", "a/b", "a/+", "a/#", "#", "+", "+/b", "a/b/c", "a/+/c", "a/b/#", "", "/", "a/", "/a", "+/+", "a/b/c/d", "+/#"}
	var b1, b2 [8]string
	for _, f := range fs {
		for _, p := range fs {
			if got, want := WithinLevels(Split(f, b1[:]), Split(p, b2[:])), Within(f, p); got != want {
				t.Errorf("WithinLevels(%q, %q) = %v, Within says %v", f, p, got, want)
			}
		}
	}
}

func FuzzWithinLevels(f *testing.F) {
	f.Add("a/b", "a/+")
	f.Add("a/#", "a")
	f.Fuzz(func(t *testing.T, a, b string) {
		if Check(a) != nil || Check(b) != nil {
			return
		}
		if got, want := WithinLevels(Split(a, nil), Split(b, nil)), Within(a, b); got != want {
			t.Fatalf("WithinLevels(%q, %q) = %v, Within says %v", a, b, got, want)
		}
	})
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a", false},
		{"a/+", "a/", true},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"+/+", "a/b", true},
		{"+", "a/b", false},
		{"#", "a/b/c", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "b/c", false},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
	} {
		if got := Match(c.filter, c.topic); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}
