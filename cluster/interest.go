package cluster

import (
	"sort"
	"strings"

	"github.com/tether-iot/tether/devices/topic"
)

// interest is the set of topic filters the clients of one node hold,
// indexed for the question asked of every message: does it match?
type interest struct {
	version uint64
	filters []string // as announced, sorted
	// byLevel holds the plain filters by their first level; wild those
	// whose first level is a wildcard.
	byLevel map[string][]string
	wild    []string
	// shared maps each shared subscription ($share/group/filter) to its
	// filter.
	shared map[string]string
}

const sharePrefix = "$share/"

func newInterest(version uint64, filters []string) *interest {
	in := &interest{version: version, filters: filters, byLevel: map[string][]string{}, shared: map[string]string{}}
	for _, f := range filters {
		if topic.Check(f) != nil && !strings.HasPrefix(f, sharePrefix) {
			continue // nothing a client could hold; never matches
		}
		if rest, ok := strings.CutPrefix(f, sharePrefix); ok {
			if _, filter, ok := strings.Cut(rest, "/"); ok && topic.Check(filter) == nil {
				in.shared[f] = filter
			}
			continue
		}
		first, _, _ := strings.Cut(f, "/")
		if first == "+" || first == "#" {
			in.wild = append(in.wild, f)
		} else {
			in.byLevel[first] = append(in.byLevel[first], f)
		}
	}
	return in
}

// matches reports whether some plain (not shared) filter matches name.
func (in *interest) matches(name string) bool {
	first, _, _ := strings.Cut(name, "/")
	for _, f := range in.byLevel[first] {
		if topic.Match(f, name) {
			return true
		}
	}
	for _, f := range in.wild {
		if topic.Match(f, name) {
			return true
		}
	}
	return false
}

// eachShared calls fn with each shared subscription matching name.
func (in *interest) eachShared(name string, fn func(key string)) {
	for key, f := range in.shared {
		if topic.Match(f, name) {
			fn(key)
		}
	}
}

// sameFilters reports whether a and b (sorted) are equal.
func sameFilters(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// sortedSet returns the keys of set, sorted.
func sortedSet(set map[string]struct{}) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
