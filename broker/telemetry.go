package broker

import (
	"bytes"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/devices/topic"
	"github.com/tether-iot/tether/internal/logevery"
	"github.com/tether-iot/tether/internal/logtext"
)

// TelemetryHook feeds what devices publish as telemetry to the telemetry
// history (SPEC §4, §6): a JSON object on devices/{id}/telemetry (nested
// objects flattened with dots), a bare number on
// devices/{id}/telemetry/{metric}, and either on the topics that
// telemetry.topics maps to a device (SetTopics). It runs after the
// message has been routed, on the publisher's goroutine: it parses the
// payload and queues it, and never touches SQLite. A payload it cannot
// store is routed all the same, counted by reason, and the first
// rejection per device per minute is logged with the reason (never the
// payload).
type TelemetryHook struct {
	mqtt.HookBase
	store *devices.Telemetry
	log   *slog.Logger

	// identifier says who a client is (Auth.Identity); unset: nobody is
	// a device, and mapped topics are never stored.
	identifier
	// maps are telemetry.topics, compiled.
	maps atomic.Pointer[[]telemetryMap]

	// logged is when a rejection was last logged, by the publisher's
	// client id (a device's id).
	logged *logevery.Keys
}

// telemetryMap is one telemetry.topics entry: a topic matching filter is
// the telemetry of the device in level from, or of the publishing device
// when from < 0.
type telemetryMap struct {
	filter string
	from   int
}

// rejectLogEvery is how often a device's rejected telemetry is logged.
const rejectLogEvery = time.Minute

// NewTelemetryHook returns the hook that feeds store; log may be nil.
func NewTelemetryHook(store *devices.Telemetry, log *slog.Logger) *TelemetryHook {
	if log == nil {
		log = slog.Default()
	}
	return &TelemetryHook{store: store, log: log.With("component", "telemetry"), logged: logevery.New(rejectLogEvery)}
}

func (h *TelemetryHook) ID() string { return "tether-telemetry" }

func (h *TelemetryHook) Provides(b byte) bool { return b == mqtt.OnPublished }

// TelemetryTopic is one entry of telemetry.topics: topics that firmware
// publishes to (Tasmota's tele/+/SENSOR, ...) whose payloads are a
// device's telemetry.
type TelemetryTopic struct {
	// Filter is a topic filter.
	Filter string
	// DeviceFrom says whose telemetry it is: "%c" (the publishing
	// device) or the 0-based index of a "+" level of Filter that holds the
	// device's id.
	DeviceFrom string
}

// SetTopics replaces the telemetry.topics mappings (validated when the
// configuration is loaded; an entry that is not valid is skipped).
func (h *TelemetryHook) SetTopics(ts []TelemetryTopic) {
	ms := make([]telemetryMap, 0, len(ts))
	for _, t := range ts {
		m := telemetryMap{filter: t.Filter, from: -1}
		if t.DeviceFrom != "%c" {
			n, err := strconv.Atoi(t.DeviceFrom)
			if err != nil || n < 0 || topic.Check(t.Filter) != nil {
				continue
			}
			m.from = n
		}
		ms = append(ms, m)
	}
	h.maps.Store(&ms)
}

// OnPublished queues a telemetry payload for the history writer.
func (h *TelemetryHook) OnPublished(cl *mqtt.Client, pk packets.Packet) { h.published(cl, &pk) }

// published is OnPublished for the packet by pointer (hookSet).
func (h *TelemetryHook) published(cl *mqtt.Client, pk *packets.Packet) {
	var s devices.Sample
	var err error
	id, ok := DeviceTopic(pk.TopicName, "telemetry")
	switch {
	case ok && !cl.Net.Inline:
		// The packet's own buffer, which nothing changes: the sample
		// may share it.
		s, err = devices.ParseTelemetryShared(pk.Payload)
	case ok:
		s, err = devices.ParseTelemetry(pk.Payload)
	default:
		var metric string
		if id, metric, ok = splitDeviceTopic(pk.TopicName, "telemetry"); ok {
			s, err = devices.ParseTelemetryValue(metric, pk.Payload)
		} else if id, ok, err = h.mapped(cl, pk.TopicName); ok && err == nil {
			s, err = parseMapped(pk.TopicName, pk.Payload)
		}
	}
	if !ok {
		return
	}
	if err == nil && !s.TS.IsZero() {
		err = s.CheckAhead(time.Now())
	}
	if err != nil {
		h.reject(cl, id, *pk, err)
		return
	}
	h.store.AddNow(id, s)
}

// mapped finds the first telemetry.topics entry that topic matches and
// returns the device whose telemetry it is: the publishing device, which
// must be the one the topic names (a device may not write another's
// history: ErrTelemetryNotOwn). ok is false when no entry matches.
func (h *TelemetryHook) mapped(cl *mqtt.Client, name string) (id string, ok bool, err error) {
	mp := h.maps.Load()
	if mp == nil || len(*mp) == 0 || cl.Net.Inline {
		return "", false, nil
	}
	for _, m := range *mp {
		if !topic.Within(name, m.filter) {
			continue
		}
		self := ""
		if h.f.Load() != nil { // unset: nobody is a device here
			self = h.device(cl)
		}
		named := self
		if m.from >= 0 {
			named = level(name, m.from)
		}
		if self == "" || named != self {
			if named == "" {
				named = cl.ID
			}
			return named, true, fmt.Errorf("%w: %.80s", devices.ErrTelemetryNotOwn, name)
		}
		return self, true, nil
	}
	return "", false, nil
}

// parseMapped reads a mapped topic's payload: a JSON object of metrics,
// or a bare number named after the topic's last level.
func parseMapped(name string, payload []byte) (devices.Sample, error) {
	if t := bytes.TrimLeft(payload, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return devices.ParseTelemetry(payload)
	}
	return devices.ParseTelemetryValue(name[strings.LastIndexByte(name, '/')+1:], payload)
}

// level returns level n of a topic name, or "".
func level(name string, n int) string {
	for i := 0; i < n; i++ {
		j := strings.IndexByte(name, '/')
		if j < 0 {
			return ""
		}
		name = name[j+1:]
	}
	if j := strings.IndexByte(name, '/'); j >= 0 {
		name = name[:j]
	}
	return name
}

// reject counts a payload that is not stored and logs the first of each
// publishing device (or other client) per minute with the reason, never
// the payload.
func (h *TelemetryHook) reject(cl *mqtt.Client, id string, pk packets.Packet, err error) {
	h.store.Reject(err)
	// Keyed by the publisher: for a device, its id.
	if h.logged.Allow(cl.ID, time.Now()) {
		h.log.Info("telemetry not stored (first this minute for this device)", "device", id, "client", logtext.Short(cl.ID),
			"topic", logtext.Short(pk.TopicName), "reason", devices.RejectReason(err), "bytes", len(pk.Payload))
	}
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
