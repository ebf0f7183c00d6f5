package broker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// TwinHook keeps device twins: what a device publishes on
// devices/{id}/twin/reported is queued to be merged into its reported
// state, and SetDesired (the API) merges desired state, bumps its version
// and publishes the full desired state with "version", retained, on
// devices/{id}/twin/desired.
type TwinHook struct {
	mqtt.HookBase
	store *devices.Twins
	log   *slog.Logger
	pub   publisher

	// desiredMu keeps the retained desired documents in version order.
	desiredMu sync.Mutex
}

// NewTwinHook returns the hook over store; log may be nil. Call Attach
// with the broker's engine before setting desired state.
func NewTwinHook(store *devices.Twins, log *slog.Logger) *TwinHook {
	if log == nil {
		log = slog.Default()
	}
	return &TwinHook{store: store, log: log.With("component", "twins")}
}

// Attach gives the hook the engine it publishes on.
func (h *TwinHook) Attach(srv *mqtt.Server) { h.pub.attach(srv) }

func (h *TwinHook) ID() string { return "tether-twins" }

func (h *TwinHook) Provides(b byte) bool { return b == mqtt.OnPublished }

// OnPublished queues a reported-state patch.
func (h *TwinHook) OnPublished(cl *mqtt.Client, pk packets.Packet) { h.published(cl, &pk) }

// published is OnPublished for the packet by pointer (hookSet).
func (h *TwinHook) published(cl *mqtt.Client, pk *packets.Packet) {
	id, ok := DeviceTopic(pk.TopicName, "twin/reported")
	if !ok || cl.Net.Inline {
		return
	}
	if !h.store.RecordReported(id, pk.Payload) {
		h.log.Debug("reported twin not merged", "device", id, "client", cl.ID)
	}
}

// SetDesired merges patch into device's desired state and publishes the
// result, retained at QoS 1, on devices/{id}/twin/desired.
func (h *TwinHook) SetDesired(ctx context.Context, device string, patch []byte) (devices.Twin, error) {
	h.desiredMu.Lock()
	defer h.desiredMu.Unlock()
	tw, err := h.store.PatchDesired(ctx, device, patch)
	if err != nil {
		return tw, err
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   "devices/" + device + "/twin/desired",
		Payload:     devices.DesiredDocument(tw),
		PacketID:    1,
	}
	if err := h.pub.inject(pk); err != nil {
		return tw, fmt.Errorf("set desired twin of %s: publish: %w", device, err)
	}
	return tw, nil
}

// Get returns a device's twin from the store the hook merges into.
func (h *TwinHook) Get(ctx context.Context, device string) (devices.Twin, error) {
	return h.store.Get(ctx, device)
}
