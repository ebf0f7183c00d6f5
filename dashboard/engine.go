package dashboard

import (
	"context"
	"errors"

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

// SessionDeleter ends MQTT sessions for DELETE /sessions/{clientId}
// (the broker's access hook, which purges sessions for every cause, or in
// a cluster every node's: cmd/tether wires it).
type SessionDeleter interface {
	// DeleteSession ends the session under clientID, live or offline,
	// whoever owns it: a connected client is disconnected, and the
	// session's subscriptions, queued and inflight messages and stored
	// rows are purged, so that its next connection starts clean. It
	// returns once that is done (and committed, where it can wait for
	// that); found is false when there is no such session. An error
	// wrapping ErrNotEveryNode says it found none but could not ask
	// everywhere one could be.
	DeleteSession(clientID string) (found bool, err error)
}

// ErrNotEveryNode is a SessionDeleter's answer when it found no session
// but a cluster node that may hold it did not answer: the request gets
// 503, not 404.
var ErrNotEveryNode = errors.New("not every cluster node answered")
