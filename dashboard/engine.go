package dashboard

import (
	"context"

	"github.com/tether-iot/tether/broker/info"
	"github.com/tether-iot/tether/devices"
)

// Commands sends commands to devices and reads them back: what the
// command routes need of the broker (its command hook satisfies it;
// cmd/tether wires it).
type Commands interface {
	// Send records a command and publishes it to its device.
	Send(ctx context.Context, nc devices.NewCommand) (devices.Command, error)
	Get(ctx context.Context, id string) (devices.Command, error)
	List(ctx context.Context, device string, limit int, cursor string) ([]devices.Command, string, error)
	// Wait returns the command once it is done, or when ctx ends.
	Wait(ctx context.Context, id string) (devices.Command, error)
	// Expire closes the command as expired if it is still open.
	Expire(ctx context.Context, id string) (devices.Command, error)
}

// Twins sets desired state and reads twins: what the twin routes need of
// the broker (its twin hook satisfies it).
type Twins interface {
	Get(ctx context.Context, device string) (devices.Twin, error)
	// SetDesired merges patch into the desired state and publishes it.
	SetDesired(ctx context.Context, device string, patch []byte) (devices.Twin, error)
}

// Broker is what GET /clients and GET /broker read of the running MQTT
// broker (*broker.Broker satisfies it).
type Broker interface {
	// Clients lists the connected MQTT clients, in any order.
	Clients() []info.Client
	// Figures returns the engine's and the listeners' statistics.
	Figures() info.Figures
}

// Sessions is what GET /sessions and GET /broker read of the MQTT
// session store (*sessions.Store satisfies it).
type Sessions interface {
	// Sessions lists the persistent sessions, in any order.
	Sessions() []info.Session
	// QueueStoreUse returns the bytes the offline queues hold on disk and
	// their bound.
	QueueStoreUse() (used, limit int64)
}
