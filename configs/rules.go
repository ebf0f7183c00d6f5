package configs

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/tether-iot/tether/broker/rules"
	"github.com/tether-iot/tether/devices/topic"
)

// Rule is one entry of auth.rules (SPEC §5); its grammar and check live
// with the broker's rules (broker/rules), which the broker compiles.
type Rule = rules.Rule

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
