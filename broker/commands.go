package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/logtext"
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
	// refused counts publishes on command topics refused as no command
	// the broker could record, by reason.
	refused *prometheus.CounterVec
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
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_command_publishes_refused_total",
			Help: "PUBLISH packets on devices/{id}/commands/... refused as no command the broker could record, by reason: " +
				"topic (not devices/{id}/commands/{name}, or a name the API refuses), payload (not a JSON object, or a field the API refuses), " +
				"queue_full (the command store's queue).",
		}, []string{"reason"}),
	}
}

// Describe implements prometheus.Collector.
func (h *CommandHook) Describe(ch chan<- *prometheus.Desc) {
	h.ignored.Describe(ch)
	h.refused.Describe(ch)
}

// Collect implements prometheus.Collector.
func (h *CommandHook) Collect(ch chan<- prometheus.Metric) {
	h.ignored.Collect(ch)
	h.refused.Collect(ch)
}

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
	ID     string          `json:"id"`
	Params json.RawMessage `json:"params"`
	TS     string          `json:"ts"`
}

// operatorMessage is what the broker reads of a command published on
// devices/{id}/commands/{name}: its own "ts" replaces any the publisher
// gave, so that is not read.
type operatorMessage struct {
	ID      string          `json:"id"`
	Params  json.RawMessage `json:"params"`
	Timeout float64         `json:"timeout"`
}

// responseMessage is the payload on devices/{id}/responses/{cmdId}.
type responseMessage struct {
	Status string          `json:"status"`
	Result json.RawMessage `json:"result"`
	Error  string          `json:"error"`
}

// OnPublish records commands from operators and responses from devices.
// A PUBLISH on a device's command topics that cannot be recorded as a
// command is refused (refuseCommand): SPEC §7, commands are recorded
// whoever sends them.
func (h *CommandHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	err := h.publish(cl, &pk)
	return pk, err
}

// publish is OnPublish on the packet in place (hookSet).
func (h *CommandHook) publish(cl *mqtt.Client, pk *packets.Packet) error {
	if isCommandTopic(pk.TopicName) && !cl.Net.Inline { // Send records its own
		id, name, ok := splitDeviceTopic(pk.TopicName, "commands")
		if !ok {
			return h.refuseCommand(cl, *pk, packets.ErrTopicNameInvalid, "topic",
				errors.New("not devices/{id}/commands/{name}"))
		}
		npk, err := h.operatorCommand(cl, *pk, id, name)
		*pk = npk
		return err
	}
	if id, cmdID, ok := splitDeviceTopic(pk.TopicName, "responses"); ok && !cl.Net.Inline {
		if reason := h.responseRefusal(cl, id, cmdID); reason != "" {
			h.ignored.WithLabelValues(reason).Inc()
			h.log.Debug("command response ignored", "device", id, "command", cmdID, "client", cl.ID, "reason", reason)
			return nil
		}
		var r responseMessage
		if err := json.Unmarshal(pk.Payload, &r); err != nil {
			h.store.RecordResponse(cmdID, id, false, nil, "response is not a JSON object: "+err.Error())
			h.log.Debug("command response not understood: not a JSON object", "device", id, "command", cmdID) // not err: it quotes the payload
			return nil
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
	return nil
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
// packet rewritten as the broker sends commands. A command it cannot
// record is refused: a payload that is not a JSON object or whose fields
// the API would refuse (params, timeout: 0x99 payload format invalid), a
// name it would refuse (0x90 topic name invalid), a full queue (0x89
// server busy). An id that is not valid, or is another open command's,
// is replaced with one of the broker's (RecordSent), so that the device's
// answer closes this command and no other. A Message Expiry Interval
// stands for a timeout the payload does not give, up to
// devices.MaxCommandTimeout.
func (h *CommandHook) operatorCommand(cl *mqtt.Client, pk packets.Packet, device, name string) (packets.Packet, error) {
	var m operatorMessage
	if json.Unmarshal(pk.Payload, &m) != nil {
		// Not the decoder's error in the log: it quotes the payload.
		return pk, h.refuseCommand(cl, pk, packets.ErrPayloadFormatInvalid, "payload", errors.New("not a JSON object with a string id, params and a numeric timeout"))
	}
	nc := devices.NewCommand{ID: m.ID, DeviceID: device, Name: name, Params: m.Params}
	if m.Timeout != 0 {
		nc.Timeout = time.Duration(min(m.Timeout, float64(math.MaxInt64/time.Second)) * float64(time.Second))
	} else if pk.Properties.MessageExpiryInterval > 0 {
		nc.Timeout = min(time.Duration(pk.Properties.MessageExpiryInterval)*time.Second, devices.MaxCommandTimeout)
	}
	if err := nc.Check(); err != nil {
		var ie *devices.InvalidError
		if errors.As(err, &ie) && ie.Field == "id" {
			nc.ID = "" // an unusable id: give it one
			err = nc.Check()
		}
		if err != nil {
			code := packets.ErrPayloadFormatInvalid
			if errors.As(err, &ie) && (ie.Field == "name" || ie.Field == "device_id") {
				code = packets.ErrTopicNameInvalid
			}
			return pk, h.refuseCommand(cl, pk, code, "payload", err)
		}
	}
	if !h.store.RecordSent(&nc) {
		return pk, h.refuseCommand(cl, pk, packets.ErrServerBusy, "queue_full", errors.New("the command store's queue is full"))
	}
	return commandPacket(pk, nc, time.Now()), nil
}

// refuseCommand refuses a PUBLISH on a device's command topics that is
// not recorded as a command, as any refused publish (refusePublish): an
// MQTT 5 client at QoS 1/2 gets code, a 3.1.1 one is disconnected, QoS 0
// is dropped; it is neither retained nor routed. It is counted by reason
// (tether_command_publishes_refused_total).
func (h *CommandHook) refuseCommand(cl *mqtt.Client, pk packets.Packet, code packets.Code, reason string, err error) error {
	h.refused.WithLabelValues(reason).Inc()
	h.log.Debug("command refused: not recorded", "topic", logtext.Short(pk.TopicName), "client", logtext.Short(cl.ID), "reason", reason, "error", err)
	if refusePublish(cl, pk, code) {
		cl.Stop(code)
	}
	return packets.ErrRejectPacket // the engine neither retains nor routes it
}

// isCommandTopic reports whether topic is devices/{any}/commands or lies
// beneath it: the topics a device's commands/# subscription takes.
func isCommandTopic(topic string) bool {
	const prefix = "devices/"
	if !strings.HasPrefix(topic, prefix) {
		return false
	}
	rest := topic[len(prefix):]
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return false
	}
	rest = rest[i+1:]
	return rest == "commands" || strings.HasPrefix(rest, "commands/")
}

// commandPacket sets pk's payload and properties for command nc.
func commandPacket(pk packets.Packet, nc devices.NewCommand, now time.Time) packets.Packet {
	pk.Payload, _ = json.Marshal(commandMessage{ID: nc.ID, Params: nc.Params, TS: now.UTC().Format(time.RFC3339Nano)})
	pk.Properties.ResponseTopic = "devices/" + nc.DeviceID + "/responses/" + nc.ID
	pk.Properties.CorrelationData = []byte(nc.ID)
	// A session holds the command no longer than the command lives.
	pk.Properties.MessageExpiryInterval = uint32(max(nc.Timeout/time.Second, 1))
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
