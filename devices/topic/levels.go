package topic

import "strings"

// Levels returns the levels of a topic name or filter: a/b/c has 3, "a"
// and "" have 1, "/a" has 2 (an empty first level). Each is a node of
// the engine's topic index.
func Levels(t string) int { return strings.Count(t, "/") + 1 }

// TooDeep reports whether t has more than max levels; max 0 is no bound
// (mqtt.max_topic_levels).
func TooDeep(t string, max int) bool { return max > 0 && strings.Count(t, "/") >= max }

// sharePrefix is the first level of a shared subscription's filter.
const sharePrefix = "$share"

// Unshare returns the filter of a shared subscription
// "$share/{group}/{filter}", whose levels are those the engine indexes;
// any other filter as it is. Like the engine, it takes $share in any
// case: a $SHARE/g/secret/# is served as a shared subscription to
// secret/#.
func Unshare(f string) string {
	first, rest, ok := strings.Cut(f, "/")
	if !ok || !strings.EqualFold(first, sharePrefix) {
		return f
	}
	if _, filter, ok := strings.Cut(rest, "/"); ok {
		return filter
	}
	return f
}
