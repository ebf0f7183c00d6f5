package devices

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/tether-iot/tether/devices/topic"
)

// Access of a device grant or an auth rule (SPEC §5).
const (
	AccessPublish   = "publish"
	AccessSubscribe = "subscribe"
	AccessAll       = "all"
)

// MaxGrants is the most topic grants a device has.
const MaxGrants = 32

// TopicGrant lets a device publish to, subscribe to, or both, the topics
// of Filter beyond its built-in ones (SPEC §5), so that firmware with its
// own topic conventions (Tasmota's tele/%c/SENSOR, Shelly, Home Assistant
// discovery) can use a device identity. "%c" in Filter stands for the
// device's id.
type TopicGrant struct {
	Filter string `json:"filter"`
	Access string `json:"access"`
}

// Publish and Subscribe report what g gives.
func (g TopicGrant) Publish() bool   { return g.Access == AccessPublish || g.Access == AccessAll }
func (g TopicGrant) Subscribe() bool { return g.Access == AccessSubscribe || g.Access == AccessAll }

// Expand returns g's filter for device id, as written: check it with
// For before granting it.
func (g TopicGrant) Expand(id string) string { return strings.ReplaceAll(g.Filter, "%c", id) }

// For returns g's filter for device id, and an error if that filter
// would reach what the grant may not (checkGrant's rules, applied once
// "%c" is the id): a grant whose first level is "%c" names devices/...
// for a device whose id is "devices", so %c/# would give that device
// every device's topics. The registry refuses such a grant when it is
// set, and the broker skips one stored before this check existed.
func (g TopicGrant) For(id string) (string, error) {
	f := g.Expand(id)
	if first, rest, _ := strings.Cut(f, "/"); first == "devices" {
		if second, _, _ := strings.Cut(rest, "/"); second != id {
			return f, fmt.Errorf("%q is %q for device %q: under devices/ a grant names only the device's own topics", g.Filter, f, id)
		}
	}
	if g.Publish() {
		for _, b := range grantBrokerTopics {
			if b = strings.ReplaceAll(b, "%c", id); topic.Overlap(f, b) {
				return f, fmt.Errorf("%q is %q for device %q: %s is published by the broker only", g.Filter, f, id, b)
			}
		}
	}
	return f, nil
}

// ParseGrant reads the CLI's FILTER:ACCESS form ("tele/%c/#:publish").
func ParseGrant(s string) (TopicGrant, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return TopicGrant{}, invalid("topic", "%q: want FILTER:ACCESS, ACCESS one of publish, subscribe, all", s)
	}
	g := TopicGrant{Filter: s[:i], Access: s[i+1:]}
	return g, checkGrant("topic", g)
}

// grantBrokerTopics are a device's own topics that only the broker
// publishes (SPEC §4): no grant may let the device publish there.
var grantBrokerTopics = []string{"devices/%c/commands/#", "devices/%c/twin/desired", "devices/%c/status"}

// checkGrants validates device id's grants: at most MaxGrants, each valid
// (checkGrant), no filter twice.
func checkGrants(field, id string, gs []TopicGrant) error {
	if len(gs) > MaxGrants {
		return invalid(field, "more than %d grants", MaxGrants)
	}
	seen := map[string]bool{}
	for i, g := range gs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if err := checkGrant(f, g); err != nil {
			return err
		}
		if _, err := g.For(id); err != nil {
			return invalid(f+".filter", "%v", err)
		}
		if seen[g.Filter] {
			return invalid(f+".filter", "%q is granted twice", g.Filter)
		}
		seen[g.Filter] = true
	}
	return nil
}

// checkGrant validates one grant. Its filter is a valid MQTT filter in
// which "%" appears only as "%c"; it may not start with '$' ($SYS,
// $share) nor with a wildcard level, and under devices/ only the device's
// own topics may be named (devices/%c/...): nothing of another device
// (SPEC §5). Publish access may not reach the topics only the broker
// publishes: devices/%c/commands/#, twin/desired and status.
func checkGrant(field string, g TopicGrant) error {
	switch g.Access {
	case AccessPublish, AccessSubscribe, AccessAll:
	default:
		return invalid(field+".access", "%q is not one of publish, subscribe, all", g.Access)
	}
	f := g.Filter
	if err := topic.Check(f); err != nil {
		return invalid(field+".filter", "%q: %v", f, err)
	}
	if strings.Count(f, "%") != strings.Count(f, "%c") {
		return invalid(field+".filter", "%q: only %%c (the device's id) may follow %%", f)
	}
	first, rest, _ := strings.Cut(f, "/")
	switch {
	case strings.HasPrefix(f, "$"):
		return invalid(field+".filter", "%q: topics starting with $ ($SYS, $share) cannot be granted", f)
	case first == "+" || first == "#":
		return invalid(field+".filter", "%q: the first level must be fixed (a wildcard there would reach other devices' topics)", f)
	case first == "devices":
		if second, _, _ := strings.Cut(rest, "/"); second != "%c" {
			return invalid(field+".filter", "%q: under devices/ a grant names only the device's own topics, devices/%%c/...", f)
		}
	}
	if g.Publish() {
		for _, b := range grantBrokerTopics {
			if topic.Overlap(f, b) {
				return invalid(field+".filter", "%q: %s is published by the broker only", f, b)
			}
		}
	}
	return nil
}

// DeviceAccess returns what decides device id's access beyond the
// built-in rules: its type and grants, from the in-memory cache. ok is
// false for an unknown or disabled device. The grants are shared: do not
// modify them.
func (r *Registry) DeviceAccess(id string) (typ string, topics []TopicGrant, ok bool) {
	r.mu.RLock()
	c, found := r.devices[id]
	r.mu.RUnlock()
	return c.typ, c.topics, found && c.enabled
}

// OnDeviceChange registers f to be called, after the change is committed,
// with the id of a device whose type or grants changed: the broker applies
// them to the device's live connection. f must not block.
func (r *Registry) OnDeviceChange(f func(id string)) {
	r.revokeMu.Lock()
	r.onChange = append(r.onChange, f)
	r.revokeMu.Unlock()
}

// changed tells this node's OnDeviceChange callbacks, and the other
// nodes'.
func (r *Registry) changed(id string) {
	r.fireChanged(id)
	r.share(note{Kind: noteChange, Name: id})
}

func (r *Registry) fireChanged(id string) {
	r.revokeMu.Lock()
	fs := slices.Clone(r.onChange)
	r.revokeMu.Unlock()
	for _, f := range fs {
		f(id)
	}
}

func encodeGrants(gs []TopicGrant) string {
	if len(gs) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(gs)
	return string(b)
}

// decodeGrants reads the stored column; what does not decode (it was
// checked when written) is no grant.
func decodeGrants(s string) []TopicGrant {
	gs := []TopicGrant{}
	_ = json.Unmarshal([]byte(s), &gs)
	return gs
}

func cloneGrants(gs []TopicGrant) []TopicGrant {
	if gs == nil {
		return []TopicGrant{}
	}
	return slices.Clone(gs)
}
