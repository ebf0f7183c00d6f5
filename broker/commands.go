package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/devices"
)

// CommandHook tracks commands (SPEC §7) through the broker:
//
//   - a command an operator publishes on devices/{id}/commands/{name} is
//     recorded (its "id" kept when valid, else one is given) and the
//     message rewritten to carry {"id","params","ts"}, with ResponseTopic
//     devices/{id}/responses/{cmdId} and CorrelationData cmdId for MQTT 5
//     devices and a Message Expiry of the command's timeout, so that a
//     persistent session holds it no longer than that;
//   - Send records a command from the API and publishes it the same way as
//     the broker;
//   - the command is delivered when the device acknowledges it (PUBACK for
//     QoS 1/2, written to its socket for QoS 0);
//   - the device's answer on devices/{id}/responses/{cmdId} closes it.
//
// Everything for SQLite is queued on the Commands store; the hook itself
// does only map lookups on the MQTT goroutines.
type CommandHook struct {
	mqtt.HookBase
	// identifier says which device a client is (SetIdentify): only that
	// device closes its commands.
	identifier
	store *devices.Commands
	log   *slog.Logger
	pub   publisher

	// mu guards inflight: (device client, packet id) → command id, for
	// QoS 1/2 commands awaiting their acknowledgement.
	mu       sync.Mutex
	inflight map[inflightKey]string
	// nInflight is len(inflight), stored under mu: the acknowledgement
	// of every other QoS 1/2 message (nearly all of them) returns on one
	// atomic load instead of taking mu.
	nInflight atomic.Int64

	// ignored counts responses that closed nothing, by reason.
	ignored *prometheus.CounterVec
}

type inflightKey struct {
	client string
	id     uint16
}

// NewCommandHook returns the hook over store; log may be nil. Call Attach
// with the broker's engine before sending commands.
func NewCommandHook(store *devices.Commands, log *slog.Logger) *CommandHook {
	if log == nil {
		log = slog.Default()
	}
	return &CommandHook{store: store, log: log.With("component", "commands"), inflight: map[inflightKey]string{},
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_command_responses_ignored_total",
			Help: "Messages on devices/{id}/responses/{cmdId} that closed no command, by reason: " +
				"other_device (the command is addressed to another device), not_device (not sent by device {id} itself).",
		}, []string{"reason"}),
	}
}

// Describe implements prometheus.Collector.
func (h *CommandHook) Describe(ch chan<- *prometheus.Desc) { h.ignored.Describe(ch) }

// Collect implements prometheus.Collector.
func (h *CommandHook) Collect(ch chan<- prometheus.Metric) { h.ignored.Collect(ch) }

// Attach gives the hook the engine it publishes on.
func (h *CommandHook) Attach(srv *mqtt.Server) { h.pub.attach(srv) }

func (h *CommandHook) ID() string { return "tether-commands" }

func (h *CommandHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnPacketSent:
		return true
	}
	return false
}

// commandMessage is the payload on devices/{id}/commands/{name}.
type commandMessage struct {
	ID      string          `json:"id"`
	Params  json.RawMessage `json:"params"`
	TS      string          `json:"ts"`
	Timeout float64         `json:"timeout,omitempty"`
}

// responseMessage is the payload on devices/{id}/responses/{cmdId}.
type responseMessage struct {
	Status string          `json:"status"`
	Result json.RawMessage `json:"result"`
	Error  string          `json:"error"`
}

// OnPublish records commands from operators and responses from devices.
func (h *CommandHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.publish(cl, &pk)
	return pk, nil
}

// publish is OnPublish on the packet in place (hookSet).
func (h *CommandHook) publish(cl *mqtt.Client, pk *packets.Packet) {
	if id, name, ok := splitDeviceTopic(pk.TopicName, "commands"); ok {
		if cl.Net.Inline {
			return // Send recorded it
		}
		*pk = h.operatorCommand(cl, *pk, id, name)
		return
	}
	if id, cmdID, ok := splitDeviceTopic(pk.TopicName, "responses"); ok && !cl.Net.Inline {
		if reason := h.responseRefusal(cl, id, cmdID); reason != "" {
			h.ignored.WithLabelValues(reason).Inc()
			h.log.Debug("command response ignored", "device", id, "command", cmdID, "client", cl.ID, "reason", reason)
			return
		}
		var r responseMessage
		if err := json.Unmarshal(pk.Payload, &r); err != nil {
			h.store.RecordResponse(cmdID, id, false, nil, "response is not a JSON object: "+err.Error())
			h.log.Debug("command response not understood", "device", id, "command", cmdID, "error", err)
			return
		}
		switch r.Status {
		case "ok":
			h.store.RecordResponse(cmdID, id, true, r.Result, "")
		case "error":
			h.store.RecordResponse(cmdID, id, false, r.Result, r.Error)
		default:
			h.store.RecordResponse(cmdID, id, false, r.Result, fmt.Sprintf("response status %q is neither ok nor error", r.Status))
		}
	}
}

// responseRefusal says why a response from cl on
// devices/{device}/responses/{cmdID} may not close that command, or "" if
// it may: only device {device} itself closes a command addressed to it
// (SPEC §7): the client authenticated as that device (its client id is
// its id), not any client that chose the id. Responses to no open
// command go to the store, which counts them as late or unknown.
func (h *CommandHook) responseRefusal(cl *mqtt.Client, device, cmdID string) string {
	if cl.ID != device || h.device(cl) != device {
		return "not_device"
	}
	if to, open := h.store.OpenFor(cmdID); open && to != device {
		return "other_device"
	}
	return ""
}

// operatorCommand records a command published over MQTT and returns the
// packet rewritten as the broker sends commands.
func (h *CommandHook) operatorCommand(cl *mqtt.Client, pk packets.Packet, device, name string) packets.Packet {
	var m commandMessage
	if err := json.Unmarshal(pk.Payload, &m); err != nil {
		h.log.Debug("command not recorded: payload is not a JSON object", "device", device, "client", cl.ID, "error", err)
		return pk
	}
	nc := devices.NewCommand{ID: m.ID, DeviceID: device, Name: name, Params: m.Params}
	if m.Timeout > 0 {
		nc.Timeout = time.Duration(m.Timeout * float64(time.Second))
	} else if pk.Properties.MessageExpiryInterval > 0 {
		nc.Timeout = time.Duration(pk.Properties.MessageExpiryInterval) * time.Second
	}
	if err := nc.Check(); err != nil {
		var ie *devices.InvalidError
		if !errors.As(err, &ie) || ie.Field != "id" {
			h.log.Debug("command not recorded", "device", device, "client", cl.ID, "error", err)
			return pk
		}
		nc.ID = "" // an unusable id: give it one
		if err := nc.Check(); err != nil {
			return pk
		}
	}
	if !h.store.RecordSent(nc) {
		h.log.Debug("command not recorded: queue full", "device", device, "command", nc.ID)
	}
	return commandPacket(pk, nc, time.Now())
}

// commandPacket sets pk's payload and properties for command nc.
func commandPacket(pk packets.Packet, nc devices.NewCommand, now time.Time) packets.Packet {
	pk.Payload, _ = json.Marshal(commandMessage{ID: nc.ID, Params: nc.Params, TS: now.UTC().Format(time.RFC3339Nano)})
	pk.Properties.ResponseTopic = "devices/" + nc.DeviceID + "/responses/" + nc.ID
	pk.Properties.CorrelationData = []byte(nc.ID)
	if pk.Properties.MessageExpiryInterval == 0 {
		pk.Properties.MessageExpiryInterval = uint32(max(nc.Timeout/time.Second, 1))
	}
	pk.FixedHeader.Retain = false
	return pk
}

// Send records a command from the API and publishes it to the device at
// QoS 1 as the broker.
func (h *CommandHook) Send(ctx context.Context, nc devices.NewCommand) (devices.Command, error) {
	if err := nc.Check(); err != nil {
		return devices.Command{}, err
	}
	cmd, err := h.store.Create(ctx, nc)
	if err != nil {
		return devices.Command{}, err
	}
	pk := commandPacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   "devices/" + nc.DeviceID + "/commands/" + nc.Name,
		PacketID:    1,
	}, nc, cmd.CreatedAt)
	if err := h.pub.inject(pk); err != nil {
		// Stored but not sent: it will expire.
		return cmd, fmt.Errorf("send command %s: publish: %w", cmd.ID, err)
	}
	return cmd, nil
}

// commandFor returns the command that pk (a PUBLISH towards cl) carries
// when cl is that command's device: an open command addressed to cl, or
// one on cl's own command topic that this node's store does not know
// yet. In a cluster on PostgreSQL a command sent through another node
// crosses the bus faster than the database tells this node's store of it
// (devices/commands_shared.go): delivered before then, it would stay
// pending. The store marks a command delivered only if it is pending and
// addressed to cl.
func (h *CommandHook) commandFor(cl *mqtt.Client, pk packets.Packet) (string, bool) {
	if pk.FixedHeader.Type != packets.Publish || len(pk.Properties.CorrelationData) == 0 || cl.Net.Inline {
		return "", false
	}
	id := string(pk.Properties.CorrelationData)
	if dev, ok := h.store.OpenFor(id); ok {
		return id, dev == cl.ID
	}
	dev, _, ok := splitDeviceTopic(pk.TopicName, "commands")
	return id, ok && dev == cl.ID
}

// OnQosPublish notes a QoS 1/2 command going to its device (first send and
// resends after a reconnect).
func (h *CommandHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if id, ok := h.commandFor(cl, pk); ok {
		h.mu.Lock()
		h.inflight[inflightKey{cl.ID, pk.PacketID}] = id
		h.nInflight.Store(int64(len(h.inflight)))
		h.mu.Unlock()
	}
}

// OnQosComplete marks a command delivered when its device acknowledges it.
func (h *CommandHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	// OnQosPublish stored the entry before the command was sent, so
	// before its acknowledgement can arrive.
	if pk.FixedHeader.Type == packets.Pubrec || h.nInflight.Load() == 0 {
		return
	}
	if p, ok := cl.State.Inflight.Get(pk.PacketID); ok && p.FixedHeader.Type == packets.Publish {
		return // the client's own QoS flow with the same packet id
	}
	k := inflightKey{cl.ID, pk.PacketID}
	h.mu.Lock()
	id, ok := h.inflight[k]
	delete(h.inflight, k)
	h.nInflight.Store(int64(len(h.inflight)))
	h.mu.Unlock()
	if ok {
		h.store.RecordDelivered(id, cl.ID)
	}
}

// OnQosDropped forgets a command the session gave up on (expired).
func (h *CommandHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if h.nInflight.Load() == 0 {
		return
	}
	h.mu.Lock()
	delete(h.inflight, inflightKey{cl.ID, pk.PacketID})
	h.nInflight.Store(int64(len(h.inflight)))
	h.mu.Unlock()
}

// OnPacketSent marks a QoS 0 command delivered once written to its device.
func (h *CommandHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, b []byte) {
	h.packetSent(cl, &pk)
}

// packetSent is OnPacketSent for the packet by pointer (hookSet).
func (h *CommandHook) packetSent(cl *mqtt.Client, pk *packets.Packet) {
	if pk.FixedHeader.Qos != 0 || pk.FixedHeader.Type != packets.Publish || len(pk.Properties.CorrelationData) == 0 {
		return
	}
	if id, ok := h.commandFor(cl, *pk); ok {
		h.store.RecordDelivered(id, cl.ID)
	}
}

// publisher publishes as the broker with packet properties, which
// Server.Publish cannot set: through an inline client of its own.
type publisher struct {
	mu  sync.Mutex
	srv *mqtt.Server
	cl  *mqtt.Client
}

// PublisherID is the client id the broker's own command and twin messages
// come from.
const PublisherID = "tether-broker"

func (p *publisher) attach(srv *mqtt.Server) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.srv = srv
	p.cl = srv.NewClient(nil, "local", PublisherID, true)
}

func (p *publisher) inject(pk packets.Packet) error {
	p.mu.Lock()
	srv, cl := p.srv, p.cl
	p.mu.Unlock()
	if srv == nil {
		return errors.New("broker not attached")
	}
	if pk.Payload == nil {
		pk.Payload = []byte{}
	}
	return srv.InjectPacket(cl, pk)
}

// Get returns a command from the store the hook records into.
func (h *CommandHook) Get(ctx context.Context, id string) (devices.Command, error) {
	return h.store.Get(ctx, id)
}

// List pages through a device's commands (devices.Commands.List).
func (h *CommandHook) List(ctx context.Context, device string, limit int, cursor string) ([]devices.Command, string, error) {
	return h.store.List(ctx, device, limit, cursor)
}

// Wait returns the command once it is done or ctx ends
// (devices.Commands.Wait).
func (h *CommandHook) Wait(ctx context.Context, id string) (devices.Command, error) {
	return h.store.Wait(ctx, id)
}

// Expire closes the command as expired if it is still open
// (devices.Commands.Expire).
func (h *CommandHook) Expire(ctx context.Context, id string) (devices.Command, error) {
	return h.store.Expire(ctx, id)
}

// Refused marks failed, with reason, the command pk carries when the
// session store refused it for the device's session (its queue full).
func (h *CommandHook) Refused(clientID string, pk packets.Packet, reason string) {
	id := string(pk.Properties.CorrelationData)
	if id == "" {
		return
	}
	if dev, ok := h.store.OpenFor(id); ok && dev == clientID {
		h.store.RecordResponse(id, clientID, false, nil, "not delivered: "+reason)
	}
}
