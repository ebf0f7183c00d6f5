package configs

import (
	"fmt"
	"strconv"
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

// TelemetryTopic maps topics that firmware publishes to (Tasmota's
// tele/+/SENSOR, ...) to a device's telemetry history.
type TelemetryTopic struct {
	// Filter is a topic filter.
	Filter string `yaml:"filter" json:"filter"`
	// DeviceFrom says whose telemetry it is: "%c" (the publishing
	// device) or the 0-based index of a "+" level of Filter that holds the
	// device's id. Either way only the device itself is stored.
	DeviceFrom string `yaml:"device_from" json:"device_from"`
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

// validateRules checks auth.rules; each error names the rule's index and
// field.
func validateRules(rules []Rule, bad func(key, format string, a ...any)) {
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

// validateTelemetryTopics checks telemetry.topics.
func validateTelemetryTopics(ts []TelemetryTopic, bad func(key, format string, a ...any)) {
	for i, t := range ts {
		key := func(f string) string { return fmt.Sprintf("telemetry.topics[%d].%s", i, f) }
		if err := topic.Check(t.Filter); err != nil {
			bad(key("filter"), "%q is not a topic filter: %v", t.Filter, err)
			continue
		}
		if strings.HasPrefix(t.Filter, "$") {
			bad(key("filter"), "%q: $ topics are the broker's", t.Filter)
		}
		if t.DeviceFrom == "%c" {
			continue
		}
		n, err := strconv.Atoi(t.DeviceFrom)
		levels := strings.Split(t.Filter, "/")
		switch {
		case err != nil:
			bad(key("device_from"), "%q is not %%c or a level index such as 1", t.DeviceFrom)
		case n < 0 || n >= len(levels) || levels[n] != "+":
			bad(key("device_from"), "%d: level %d of %q is not a '+' (levels count from 0)", n, n, t.Filter)
		}
	}
}
