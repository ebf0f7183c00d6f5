package broker

import mqtt "github.com/mochi-mqtt/server/v2"

// Diverter is a hook (the session store) that takes some deliveries out
// of the engine's hands: the engine must not deliver a message to a client
// when Divert says so, because the hook has queued it for that client and
// delivers it itself. The engine asks nothing of hooks between choosing a
// message's subscribers and writing it to them except the access check
// for the delivery, so New puts Divert in front of the access hook's
// check, and gives the Diverter that check (SetACL) for the messages it
// delivers.
type Diverter interface {
	mqtt.Hook
	Divert(cl *mqtt.Client, topic string) bool
	SetACL(allow func(cl *mqtt.Client, topic string) bool)
}

// diverted is the access hook with a Diverter in front of its delivery
// check.
type diverted struct {
	mqtt.Hook
	d Diverter
}

// Provides implements mqtt.Hook.
func (h *diverted) Provides(b byte) bool { return b == mqtt.OnACLCheck || h.Hook.Provides(b) }

// OnACLCheck implements mqtt.Hook.
func (h *diverted) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if !write && h.d.Divert(cl, topic) {
		return false
	}
	return h.Hook.Provides(mqtt.OnACLCheck) && h.Hook.OnACLCheck(cl, topic, write)
}

// ProvidesVaries passes on the wrapped hook's answer (see
// Retained.ProvidesVaries).
func (h *diverted) ProvidesVaries() bool {
	v, ok := h.Hook.(interface{ ProvidesVaries() bool })
	return ok && v.ProvidesVaries()
}
