package rules

import (
	"fmt"
	"strings"

	"github.com/tether-iot/tether/devices/topic"
)

// Rule is one entry of auth.rules (SPEC §5): the first rule whose who and
// access bind a client and whose topic covers the request decides it.
type Rule struct {
	// Effect is allow or deny.
	Effect string `yaml:"effect" json:"effect"`
	// Access is publish, subscribe (subscriptions and what they deliver)
	// or all.
	Access string `yaml:"access" json:"access"`
	// Topic is a topic filter; %c stands for the client id, %u for the
	// username (a device's id, a user's name).
	Topic string `yaml:"topic" json:"topic"`
	// Who is any (the default), role:NAME, user:NAME, device:ID,
	// type:DEVICE_TYPE or anonymous.
	Who string `yaml:"who" json:"who"`
}

// Who kinds of a Rule.
const (
	WhoAny       = "any"
	WhoAnonymous = "anonymous"
	WhoRole      = "role"
	WhoUser      = "user"
	WhoDevice    = "device"
	WhoType      = "type"
)

// SplitWho returns a rule's who as kind and name (empty for any and
// anonymous); an empty who is any.
func SplitWho(who string) (kind, name string) {
	if who == "" {
		return WhoAny, ""
	}
	kind, name, _ = strings.Cut(who, ":")
	return kind, name
}

// Check checks rules (auth.rules) and calls bad for each problem, with
// the key as the configuration file names it: auth.rules[INDEX].FIELD.
func Check(rules []Rule, bad func(key, format string, a ...any)) {
	for i, r := range rules {
		key := func(f string) string { return fmt.Sprintf("auth.rules[%d].%s", i, f) }
		switch r.Effect {
		case "allow", "deny":
		default:
			bad(key("effect"), "%q is not allow or deny", r.Effect)
		}
		switch r.Access {
		case "publish", "subscribe", "all":
		default:
			bad(key("access"), "%q is not one of publish, subscribe, all", r.Access)
		}
		if err := topic.Check(r.Topic); err != nil {
			bad(key("topic"), "%q is not a topic filter: %v", r.Topic, err)
		} else if strings.Count(r.Topic, "%") != strings.Count(r.Topic, "%c")+strings.Count(r.Topic, "%u") {
			bad(key("topic"), "%q: only %%c (client id) and %%u (username) may follow %%", r.Topic)
		}
		switch kind, name := SplitWho(r.Who); kind {
		case WhoAny, WhoAnonymous:
			if strings.Contains(r.Who, ":") {
				bad(key("who"), "%q: %s takes no name", r.Who, kind)
			}
		case WhoRole:
			switch name {
			case "viewer", "operator", "admin":
			default:
				bad(key("who"), "%q: the role is one of viewer, operator, admin", r.Who)
			}
		case WhoUser, WhoDevice, WhoType:
			if name == "" || strings.ContainsAny(name, " \t/+#") {
				bad(key("who"), "%q: %s: needs a name without spaces, '/', '+' or '#'", r.Who, kind)
			}
		default:
			bad(key("who"), "%q is not one of any, anonymous, role:NAME, user:NAME, device:ID, type:DEVICE_TYPE", r.Who)
		}
	}
}
