package broker

import (
	"encoding/json"
	"slices"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/devices"
)

// Status is the retained payload of devices/{id}/status (SPEC §4).
type Status struct {
	Online    bool   `json:"online"`
	Since     string `json:"since"` // RFC 3339
	Transport string `json:"transport"`
}

// StatusTopic is the topic of a device's retained status.
func StatusTopic(id string) string { return "devices/" + id + "/status" }

// online records device id connected through cl: in the registry (queued)
// and as its retained status.
func (a *Auth) online(cl *mqtt.Client, id string) {
	now := time.Now().UTC()
	a.reg.RecordPresence(devices.Presence{
		DeviceID: id, Online: true, At: now, Transport: Transport(cl),
		RemoteAddr: cl.Net.Remote, ProtocolVersion: int(cl.Properties.ProtocolVersion),
	})
	a.publishStatus(id, Status{Online: true, Since: now.Format(time.RFC3339), Transport: Transport(cl)})
	a.m.presence.WithLabelValues("online").Inc()
}

// offline records device id disconnected from cl, unless a newer
// connection for the same id has authenticated since: a session taken
// over by a reconnect must not flap to offline. The newer connection
// counts only while it is open: if it failed before attaching, nobody
// else would say offline.
func (a *Auth) offline(cl *mqtt.Client, id string) {
	if v, ok := a.current.Load(id); ok && v != cl && !v.(*mqtt.Client).Closed() {
		return
	}
	a.current.CompareAndDelete(id, cl)
	if !a.reg.HasDevice(id) { // deleted: its status goes too
		a.clearRetained(id)
		return
	}
	now := time.Now().UTC()
	a.reg.RecordPresence(devices.Presence{DeviceID: id, Online: false, At: now})
	a.publishStatus(id, Status{Online: false, Since: now.Format(time.RFC3339), Transport: Transport(cl)})
	a.m.presence.WithLabelValues("offline").Inc()
}

// clearRetained removes a deleted device's retained messages: every one
// under devices/{id}/ (its status, desired and reported twin, whatever it
// or anyone retained there), and every other one the device set that is
// still retained (the retained index knows them: RetainedLimit.Owned),
// wherever its topic (its grants', its will's); those others set on
// topics outside devices/{id}/ stay, theirs. An empty retained message
// deletes each [MQTT-3.3.1-10] through the hooks (the session store, the
// other nodes), so that a device registered later under the same id
// starts clean (SPEC §6: "retained state") and is not held to its bound
// by what it inherited; its history, commands and twin rows go in the
// registry's delete transaction (devices.DeviceData). The status and the
// desired twin are deleted even when this node does not hold them:
// another node may.
func (a *Auth) clearRetained(id string) {
	topics := []string{StatusTopic(id), "devices/" + id + "/twin/desired"}
	var under []string
	if a.retained != nil {
		under = a.retained.Under(id)
	} else {
		// Without the index (a broker assembled without RetainedLimit,
		// in tests): the engine's wildcard lookup, which reads its
		// retained tree without the lock its writes take
		// (docs/upstream.md item 6).
		for _, pk := range a.srv.Topics.Messages("devices/" + id + "/#") {
			under = append(under, pk.TopicName)
		}
	}
	for _, topic := range under {
		if !slices.Contains(topics, topic) {
			topics = append(topics, topic)
		}
	}
	if a.retained != nil {
		for _, topic := range a.retained.Owned(id) {
			// Still the device's: another client may have replaced
			// it since.
			if pk, ok := a.srv.Topics.Retained.Get(topic); ok && pk.Origin == id && !slices.Contains(topics, topic) {
				topics = append(topics, topic)
			}
		}
	}
	for _, topic := range topics {
		if err := a.srv.Publish(topic, nil, true, 0); err != nil {
			a.log.Warn("clear retained", "device", id, "topic", topic, "error", err)
		}
	}
}

func (a *Auth) publishStatus(id string, s Status) {
	b, _ := json.Marshal(s)
	if err := a.srv.Publish(StatusTopic(id), b, true, 1); err != nil {
		a.log.Warn("publish status", "device", id, "error", err)
	}
}

// OnStarted turns retained statuses that still say online (the broker was
// killed before it could say otherwise) to offline, except for devices
// that have connected since.
func (a *Auth) OnStarted() {
	a.started.Store(true)
	a.checkRestored()
	now := time.Now().UTC().Format(time.RFC3339)
	for topic, pk := range a.srv.Topics.Retained.GetAll() {
		rest, ok := strings.CutPrefix(topic, "devices/")
		if !ok {
			continue
		}
		id, ok := strings.CutSuffix(rest, "/status")
		if !ok || strings.Contains(id, "/") {
			continue
		}
		var s Status
		if json.Unmarshal(pk.Payload, &s) != nil || !s.Online {
			continue
		}
		if _, connected := a.current.Load(id); connected {
			continue
		}
		a.publishStatus(id, Status{Online: false, Since: now, Transport: s.Transport})
	}
}
