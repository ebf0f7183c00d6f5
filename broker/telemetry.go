package broker

import (
	"log/slog"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// TelemetryHook feeds what devices publish on devices/{id}/telemetry to the
// telemetry history. It runs after the message has been routed, on the
// publisher's goroutine: it parses the payload and queues it, and never
// touches SQLite. A payload that is not a JSON object of metrics is routed
// all the same, and only counted.
type TelemetryHook struct {
	mqtt.HookBase
	store *devices.Telemetry
	log   *slog.Logger
}

// NewTelemetryHook returns the hook that feeds store; log may be nil.
func NewTelemetryHook(store *devices.Telemetry, log *slog.Logger) *TelemetryHook {
	if log == nil {
		log = slog.Default()
	}
	return &TelemetryHook{store: store, log: log}
}

func (h *TelemetryHook) ID() string { return "tether-telemetry" }

func (h *TelemetryHook) Provides(b byte) bool { return b == mqtt.OnPublished }

// OnPublished queues a telemetry payload for the history writer.
func (h *TelemetryHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	id, ok := DeviceTopic(pk.TopicName, "telemetry")
	if !ok {
		return
	}
	s, err := devices.ParseTelemetry(pk.Payload)
	if err != nil {
		h.store.Reject(err)
		h.log.Debug("telemetry not stored", "device", id, "client", cl.ID, "error", err)
		return
	}
	h.store.Add(id, s, time.Now())
}

// DeviceTopic returns {id} when topic is devices/{id}/{rest} with a valid
// device id.
func DeviceTopic(topic, rest string) (string, bool) {
	const prefix = "devices/"
	if !strings.HasPrefix(topic, prefix) || !strings.HasSuffix(topic, rest) {
		return "", false
	}
	id := topic[len(prefix) : len(topic)-len(rest)]
	if len(id) < 2 || id[len(id)-1] != '/' {
		return "", false
	}
	id = id[:len(id)-1]
	if !devices.ValidID(id) {
		return "", false
	}
	return id, true
}

// splitDeviceTopic splits devices/{id}/{kind}/{name} (name may not contain
// '/'); ok is false for any other shape.
func splitDeviceTopic(topic, kind string) (id, name string, ok bool) {
	const prefix = "devices/"
	if !strings.HasPrefix(topic, prefix) {
		return "", "", false
	}
	rest := topic[len(prefix):]
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return "", "", false
	}
	id, rest = rest[:i], rest[i+1:]
	if !strings.HasPrefix(rest, kind+"/") {
		return "", "", false
	}
	name = rest[len(kind)+1:]
	if name == "" || strings.IndexByte(name, '/') >= 0 || !devices.ValidID(id) {
		return "", "", false
	}
	return id, name, true
}
