package configs

import (
	"reflect"
	"strings"
	"testing"
)

func TestValidateRules(t *testing.T) {
	good := Rule{Effect: "allow", Access: "publish", Topic: "homeassistant/#", Who: "type:tasmota"}
	for _, tt := range []struct {
		name string
		rule Rule
		key  string // "" = valid
	}{
		{"good", good, ""},
		{"who defaults to any", Rule{Effect: "deny", Access: "subscribe", Topic: "test/nosubscribe"}, ""},
		{"placeholders", Rule{Effect: "allow", Access: "all", Topic: "clients/%c/%u/#", Who: "any"}, ""},
		{"roles", Rule{Effect: "deny", Access: "subscribe", Topic: "$SYS/#", Who: "role:viewer"}, ""},
		{"anonymous", Rule{Effect: "deny", Access: "all", Topic: "#", Who: "anonymous"}, ""},
		{"effect", Rule{Effect: "permit", Access: "publish", Topic: "a"}, "auth.rules[1].effect"},
		{"access", Rule{Effect: "allow", Access: "write", Topic: "a"}, "auth.rules[1].access"},
		{"topic empty", Rule{Effect: "allow", Access: "all"}, "auth.rules[1].topic"},
		{"topic bad #", Rule{Effect: "allow", Access: "all", Topic: "a/#/b"}, "auth.rules[1].topic"},
		{"topic bad %", Rule{Effect: "allow", Access: "all", Topic: "a/%x"}, "auth.rules[1].topic"},
		{"who role", Rule{Effect: "allow", Access: "all", Topic: "a", Who: "role:boss"}, "auth.rules[1].who"},
		{"who kind", Rule{Effect: "allow", Access: "all", Topic: "a", Who: "group:x"}, "auth.rules[1].who"},
		{"who name", Rule{Effect: "allow", Access: "all", Topic: "a", Who: "device:"}, "auth.rules[1].who"},
		{"who any:x", Rule{Effect: "allow", Access: "all", Topic: "a", Who: "any:x"}, "auth.rules[1].who"},
	} {
		c := Default()
		c.Auth.Rules = []Rule{good, tt.rule}
		err := c.Validate()
		switch {
		case tt.key == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.key != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.key+":")):
			t.Errorf("%s: error %v, want one starting %s:", tt.name, err, tt.key)
		}
	}
}

func TestValidateTelemetryTopics(t *testing.T) {
	for _, tt := range []struct {
		tt  TelemetryTopic
		key string
	}{
		{TelemetryTopic{Filter: "tele/+/SENSOR", DeviceFrom: "1"}, ""},
		{TelemetryTopic{Filter: "shellies/+/sensor/#", DeviceFrom: "1"}, ""},
		{TelemetryTopic{Filter: "zigbee2mqtt/#", DeviceFrom: "%c"}, ""},
		{TelemetryTopic{Filter: "tele/+/SENSOR", DeviceFrom: "0"}, "telemetry.topics[0].device_from"},
		{TelemetryTopic{Filter: "tele/+/SENSOR", DeviceFrom: "3"}, "telemetry.topics[0].device_from"},
		{TelemetryTopic{Filter: "tele/+/SENSOR", DeviceFrom: "%u"}, "telemetry.topics[0].device_from"},
		{TelemetryTopic{Filter: "tele/+/SENSOR"}, "telemetry.topics[0].device_from"},
		{TelemetryTopic{Filter: "tele/#/x", DeviceFrom: "%c"}, "telemetry.topics[0].filter"},
		{TelemetryTopic{Filter: "$SYS/+", DeviceFrom: "1"}, "telemetry.topics[0].filter"},
	} {
		c := Default()
		c.Telemetry.Topics = []TelemetryTopic{tt.tt}
		err := c.Validate()
		if tt.key == "" && err != nil || tt.key != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.key+":")) {
			t.Errorf("%+v: error %v, want key %q", tt.tt, err, tt.key)
		}
	}
}

func TestRulesFromFileAndEnv(t *testing.T) {
	c, err := Parse(strings.NewReader(`
auth:
  rules:
    - {effect: deny,  access: subscribe, topic: "test/nosubscribe"}
    - {effect: allow, access: publish,   topic: "homeassistant/#", who: "type:tasmota"}
telemetry:
  topics:
    - {filter: "tele/+/SENSOR", device_from: 1}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Rule{{Effect: "deny", Access: "subscribe", Topic: "test/nosubscribe"},
		{Effect: "allow", Access: "publish", Topic: "homeassistant/#", Who: "type:tasmota"}}
	if !reflect.DeepEqual(c.Auth.Rules, want) {
		t.Errorf("rules %+v", c.Auth.Rules)
	}
	if got := c.Telemetry.Topics; len(got) != 1 || got[0].DeviceFrom != "1" {
		t.Errorf("telemetry topics %+v", got)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(strings.NewReader("auth:\n  rules:\n    - {effect: deny, acess: all, topic: x}\n")); err == nil {
		t.Error("a misspelt rule field accepted")
	}
	env := map[string]string{"TETHER_AUTH_RULES": `[{"effect":"deny","access":"all","topic":"x/#","who":"anonymous"}]`}
	c = Default()
	if err := c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if len(c.Auth.Rules) != 1 || c.Auth.Rules[0].Who != "anonymous" {
		t.Errorf("rules from the environment: %+v", c.Auth.Rules)
	}
	env["TETHER_AUTH_RULES"] = `[{"efect":"deny"}]`
	if err := c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err == nil ||
		!strings.Contains(err.Error(), "TETHER_AUTH_RULES (auth.rules)") {
		t.Errorf("bad rules from the environment: %v", err)
	}
}
