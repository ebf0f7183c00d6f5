package broker

import (
	"time"

	"github.com/tether-iot/tether/broker/info"
)

// Figures returns the engine's statistics (its $SYS figures, read with
// atomic loads) and each enabled listener's. MessagesDropped includes the
// large QoS 0 messages dropped for the send queues' byte bounds
// (sendqueue.go), which the engine does not count.
func (b *Broker) Figures() info.Figures {
	i := b.Server.Info.Clone()
	f := info.Figures{
		Version:             i.Version,
		Started:             time.Unix(i.Started, 0).UTC(),
		BytesReceived:       i.BytesReceived,
		BytesSent:           i.BytesSent,
		ClientsConnected:    i.ClientsConnected,
		ClientsDisconnected: i.ClientsDisconnected,
		ClientsMaximum:      i.ClientsMaximum,
		ClientsTotal:        i.ClientsTotal,
		MessagesReceived:    i.MessagesReceived,
		MessagesSent:        i.MessagesSent,
		MessagesDropped:     i.MessagesDropped + b.sendq.droppedAll(),
		Retained:            i.Retained,
		Inflight:            i.Inflight,
		InflightDropped:     i.InflightDropped,
		Subscriptions:       i.Subscriptions,
		PacketsReceived:     i.PacketsReceived,
		PacketsSent:         i.PacketsSent,
		Listeners:           []info.Listener{},
	}
	for _, l := range b.listeners() {
		st := l.Stats()
		f.Listeners = append(f.Listeners, info.Listener{
			Transport: l.ID(),
			Address:   l.Address(),
			Open:      st.Open.Load(),
			Accepted:  st.Accepted.Load(),
			Refused:   st.Refused.Load(),
			BytesIn:   st.BytesIn.Load(),
			BytesOut:  st.BytesOut.Load(),
		})
	}
	return f
}
