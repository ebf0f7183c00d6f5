package main

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestHelpListsSubcommands: where `tether help` lists a command's
// subcommands ("devices  manage devices: list|add|..."), the list is the
// one the command's own --help shows, and each of them dispatches (its
// --help is its usage, exit 0).
func TestHelpListsSubcommands(t *testing.T) {
	code, out, _ := tether(t, "help")
	if code != 0 {
		t.Fatalf("help: exit %d", code)
	}
	lists := regexp.MustCompile(`(?m)^  (\w+) +[^\n]*: (\w+(?:\|\w+)+)$`).FindAllStringSubmatch(out, -1)
	var groups []string
	for _, m := range lists {
		group, subs := m[1], strings.Split(m[2], "|")
		groups = append(groups, group)
		code, own, errs := tether(t, group, "--help")
		if code != 0 {
			t.Fatalf("%s --help: exit %d: %s", group, code, errs)
		}
		var listed []string
		for _, l := range regexp.MustCompile(`(?m)^  (\w+) +\S`).FindAllStringSubmatch(own, -1) {
			listed = append(listed, l[1])
		}
		if !slices.Equal(subs, listed) {
			t.Errorf("tether help lists %s %v; tether %s --help lists %v", group, subs, group, listed)
		}
		for _, sub := range subs {
			code, usage, errs := tether(t, group, sub, "--help")
			if code != 0 || !strings.Contains(usage, "Usage: tether "+group+" "+sub) {
				t.Errorf("%s %s --help: exit %d; stdout %q; stderr %q", group, sub, code, usage, errs)
			}
		}
	}
	if want := []string{"devices", "tokens", "users"}; !slices.Equal(groups, want) {
		t.Errorf("tether help lists subcommands of %v, want %v:\n%s", groups, want, out)
	}
}
