package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/broker/info"
)

// Options configure a node (the cluster.* keys).
type Options struct {
	// Node is this node's name, unique in the cluster; empty: the host
	// name.
	Node string
	// Listen and Peers: the embedded NATS server's route address and the
	// other nodes'. NATSURL instead: an external NATS.
	Listen string
	Peers  []string
	// Secret is the routes' password (cluster.secret); empty: none.
	Secret string
	// TLSCert, TLSKey and TLSCA secure the routes with mutual TLS
	// (cluster.tls_*, tls.go); empty: plain routes.
	TLSCert, TLSKey, TLSCA string
	NATSURL                string
	// FlowWait is the longest a client's publish waits for another node
	// to take in what this node sent it (mqtt.backpressure_wait;
	// flow.go); 0: no flow control, a node that falls behind drops.
	FlowWait time.Duration
	// MaxTopicLevels is mqtt.max_topic_levels (0: none): a message from
	// another node, routed live or a retained copy, whose topic has more
	// levels is refused here as this node's clients' would be (another
	// node may run with a higher bound, or none: a rolling change).
	MaxTopicLevels int
	// MaxPayload is the largest message the bus carries (bytes); 0:
	// 8 MiB. Give the MQTT packet size limit and some room.
	MaxPayload int
	// Logger receives the node's log; nil means slog.Default().
	Logger *slog.Logger

	// joinMax, when set, replaces joinMax (tests of that bound).
	joinMax time.Duration
	// writeDeadline, when set, replaces the embedded server's write
	// deadline, and busConn wraps the node's in-process connection to
	// it (tests of a slow bus reader).
	writeDeadline time.Duration
	busConn       func(net.Conn) net.Conn
}

func (o *Options) maxPayload() int {
	const ceiling = 64 << 20 // NATS's own
	switch {
	case o.MaxPayload <= 0:
		return 8 << 20
	case o.MaxPayload > ceiling:
		return ceiling
	}
	return o.MaxPayload
}

// Timing of the node's announcements.
const (
	beatEvery  = time.Second
	peerExpiry = 5 * time.Second // a node not heard for this long is gone
	// beatGap: beats from a node this far apart mean the two did not
	// hear each other in between (two missed).
	beatGap   = 2*beatEvery + beatEvery/2
	claimWait = 2 * time.Second // the longest a CONNECT waits for the others
)

// Node is this Tether node's place in the cluster.
type Node struct {
	name        string
	inst        string // this run of the node: tells a restart from a duplicate name
	log         *slog.Logger
	ns          *server.Server // the embedded NATS; nil with an external one
	token       string         // the embedded server's client token
	nc          *nats.Conn
	peersWanted bool // cluster.peers given

	srv      atomic.Pointer[mqtt.Server]
	injector *mqtt.Client // injects the bus's messages; set by Attach
	hook     *hook
	m        *metrics
	// maxLevels is Options.MaxTopicLevels.
	maxLevels int

	// mu guards the writes of peers and lost (copy on write) and
	// version.
	mu    sync.Mutex
	peers atomic.Pointer[map[string]*peer]
	// lost is the runs of other nodes this node took for gone (expire),
	// until each is heard again (peers.go: lostPeer).
	lost    atomic.Pointer[map[string]*lostPeer]
	local   atomic.Pointer[interest] // this node's clients' filters
	version uint64
	// localDurable is the filters of this node's persistent sessions,
	// as last announced (durable.go).
	localDurable []string
	changed      chan struct{} // a subscription changed: recompute local

	// serving is the shared subscriptions the message being injected
	// may be delivered to; set and read only on the bus subscription's
	// goroutine, while it injects (hook.OnSelectSubscribers).
	serving map[string]bool
	turn    atomic.Uint64 // round robin among nodes serving a group
	// Copies of other nodes' retained messages (retained.go).
	sync syncState
	// tombs are the retained messages deleted here (retained.go).
	tombs tombs
	// Readiness at start (join.go).
	join joinState

	yield atomic.Pointer[func(clientID string, o broker.SessionOwner, first bool) bool]
	gone  atomic.Pointer[func(node string)]

	durable atomic.Pointer[Durability]
	// keepRetained writes a copied retained message (or a deletion) to
	// this node's session store (SetRetainedStore).
	keepRetained atomic.Pointer[func(packets.Packet)]
	early        sentEarly

	// Flow control (flow.go): streams numbers this node's windows;
	// inflow is the receiving side.
	flowWait time.Duration
	streams  atomic.Uint64
	inflow   inflow
	// holding tells whether an injection is in the engine now, and
	// injections counts those done (flow.go: heldNotices).
	holding    atomic.Bool
	injections atomic.Uint64

	rate     atomic.Uint64 // this node's messages/s, float64 bits
	lastRecv int64
	lastAt   time.Time

	subs    []*nats.Subscription
	beatSub *nats.Subscription // of subjBeat (caughtUp)
	// expiring: a look for the nodes not heard from is under way (expire).
	expiring atomic.Bool
	// lifeMu guards closed and the wg.Add of goroutines started from
	// bus callbacks, so that none starts once Close waits.
	lifeMu    sync.Mutex
	closed    bool
	stop      chan struct{}
	stopCtx   context.Context // done once stop is closed
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// peer is what this node knows of another; replaced, never changed.
type peer struct {
	name, inst string
	in         *interest // nil until its filters arrived
	dur        *interest // its persistent sessions' filters (durable.go)
	seen       time.Time
	heard      time.Time // first heard in this run of it, or heard again after a gap (onBeat)
	clients    int64
	rate       float64
	asked      time.Time // when its filters were last asked for
	hearsUs    bool      // its last beat named this node (or it is too old to name any)
	win        *window   // this node's stream to it (flow.go); nil without flow control
}

var hostChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// DefaultNode is a node's name when cluster.node is empty: the host name,
// its other characters as '-'; "" when that is no name.
func DefaultNode() string {
	h, _ := os.Hostname()
	if name := hostChars.ReplaceAllString(h, "-"); validName(name) {
		return name
	}
	return ""
}

// New starts the node's bus: the embedded NATS server (clustered with the
// peers) or the connection to an external NATS. Nothing crosses it until
// Attach.
func New(o Options) (*Node, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.Node == "" {
		if o.Node = DefaultNode(); o.Node == "" {
			return nil, errors.New("cluster: cluster.node: the host name cannot name this node; set one")
		}
	}
	if !validName(o.Node) {
		return nil, fmt.Errorf("cluster: cluster.node %q is not 1 to 64 letters, digits, '-' or '_'", o.Node)
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	n := &Node{
		name: o.Node, inst: hex.EncodeToString(b[:]), log: log.With("component", "cluster", "node", o.Node),
		peersWanted: len(o.Peers) > 0, flowWait: o.FlowWait, changed: make(chan struct{}, 1), stop: make(chan struct{}), m: newMetrics(),
		maxLevels: max(o.MaxTopicLevels, 0),
	}
	n.hook = &hook{n: n}
	n.join.max = joinMax
	if o.joinMax > 0 {
		n.join.max = o.joinMax
	}
	n.stopCtx, n.cancel = context.WithCancel(context.Background())
	empty := map[string]*peer{}
	n.peers.Store(&empty)
	noneLost := map[string]*lostPeer{}
	n.lost.Store(&noneLost)
	n.local.Store(newInterest(0, nil))
	if o.NATSURL == "" {
		_, _ = rand.Read(b[:])
		n.token = hex.EncodeToString(b[:])
		ns, err := startEmbedded(&o, n.token, log.With("component", "nats", "node", o.Node))
		if err != nil {
			return nil, err
		}
		n.ns = ns
	}
	nc, err := n.connect(&o)
	if err != nil {
		if n.ns != nil {
			n.ns.Shutdown()
		}
		return nil, fmt.Errorf("cluster: connect to NATS: %w", err)
	}
	n.nc = nc
	return n, nil
}

// Name is this node's name.
func (n *Node) Name() string { return n.name }

// RouteAddr is the embedded NATS server's route address ("" with an
// external NATS): what the other nodes' cluster.peers name.
func (n *Node) RouteAddr() string {
	if n.ns == nil {
		return ""
	}
	if a := n.ns.ClusterAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Hook is the engine hook that forwards publishes and tracks
// subscriptions; give it to the broker with its other hooks.
func (n *Node) Hook() mqtt.Hook { return n.hook }

// SetYield sets what this node answers when a client connects elsewhere
// with a client id (broker.Auth.YieldSession; first: the asking node wins
// a tie with a CONNECT of that id here); without it, a live client here
// with that id is disconnected and the claim granted.
func (n *Node) SetYield(f func(clientID string, o broker.SessionOwner, first bool) bool) {
	n.yield.Store(&f)
}

// SetNodeGone sets what this node does when another node leaves or is
// lost (not heard for peerExpiry): f runs on a goroutine of its own, and
// this node's filters are announced again after it (f may have given
// this node sessions: the shared session store's AdoptOrphans).
func (n *Node) SetNodeGone(f func(node string)) { n.gone.Store(&f) }

// nodeGone runs the SetNodeGone function for node.
func (n *Node) nodeGone(node string) {
	f := n.gone.Load()
	if f == nil {
		return
	}
	n.goBackground(func() {
		(*f)(node)
		n.touch()
	})
}

// InjectorID is the client id of the inline client through which node
// injects what comes from the bus: the Origin of the messages, retained
// ones included, that it takes from the other nodes.
func InjectorID(node string) string { return "tether-cluster-" + node }

// Attach starts the traffic: messages for this node are injected into
// srv, this node's filters are announced, and it beats.
func (n *Node) Attach(srv *mqtt.Server) error {
	// Inline, as the broker's own publishes, but held back by a slow
	// subscriber like a client's (broker.Backpressure).
	n.injector = srv.NewClient(nil, broker.BusListener, InjectorID(n.name), true)
	n.injector.Properties.ProtocolVersion = 5
	n.srv.Store(srv)
	n.lastAt = time.Now()
	n.sync.started = n.lastAt.Unix()
	n.join.began(n.lastAt)
	if err := n.subscribe(); err != nil {
		return err
	}
	n.wg.Add(2)
	go n.announcer()
	go n.beater()
	if n.flowWait > 0 {
		n.wg.Add(1)
		go n.heldNotices()
	}
	n.touch()
	n.reintroduce()
	return nil
}

// subscribe subscribes to this node's subjects.
func (n *Node) subscribe() error {
	for _, s := range []struct {
		subject string
		fn      nats.MsgHandler
	}{
		{subjMsg + n.name, n.onMessage},
		{subjBeat, n.onBeat},
		{subjInterest, n.onInterest},
		{subjWant + n.name, func(*nats.Msg) { n.announce(true) }},
		{subjBye, n.onBye},
		{subjClaim, n.onClaim},
		{subjRetained + n.name, n.onRetainedWanted},
		{subjAck + n.name, n.onAck},
		{subjTaking, n.onAck},
	} {
		sub, err := n.nc.Subscribe(s.subject, s.fn)
		if err != nil {
			n.unsubscribe()
			return fmt.Errorf("cluster: subscribe %s: %w", s.subject, err)
		}
		switch s.subject {
		case subjMsg + n.name:
			_ = sub.SetPendingLimits(1<<16, 256<<20)
		case subjBeat:
			n.beatSub = sub
		}
		n.subs = append(n.subs, sub)
	}
	return nil
}

// Close leaves the cluster (the others forget this node at once) and
// stops the bus. Idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		if n.srv.Load() != nil {
			n.publishJSON(subjBye, bye{Node: n.name, Inst: n.inst})
			n.unsubscribe()
		}
		n.lifeMu.Lock()
		n.closed = true
		n.lifeMu.Unlock()
		close(n.stop)
		n.cancel()
		n.wg.Wait()
		// What is queued goes out while the bus is up (nats.go's Flush
		// waits up to 10 s for the server's answer). With the bus down
		// no answer can come: waiting would only add 10 s to shutdown.
		if n.nc.Status() == nats.CONNECTED {
			_ = n.nc.Flush()
		} else if b, err := n.nc.Buffered(); err == nil && b > 0 {
			n.log.Warn("cluster bus down while leaving: messages buffered for it are lost", "bytes", b)
		}
		n.nc.Close()
		if n.ns != nil {
			n.ns.Shutdown()
			n.ns.WaitForShutdown()
		}
	})
	return nil
}

func (n *Node) unsubscribe() {
	for _, s := range n.subs {
		_ = s.Unsubscribe()
	}
	n.subs = nil
}

// Healthy reports why the node cannot serve as part of the cluster
// (/readyz): its NATS connection is down, or it has not joined yet
// (join.go).
func (n *Node) Healthy() error {
	if err := n.busUp(); err != nil {
		return err
	}
	if w := n.joining(time.Now()); w != "" {
		return fmt.Errorf("cluster: joining: waiting for %s", w)
	}
	return nil
}

// busUp says why the node's NATS connection is down (nil: up).
func (n *Node) busUp() error {
	if st := n.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("cluster bus: %s", st)
	}
	return nil
}

// Warning is what /readyz tells an operator about the cluster besides
// readiness ("" when all is well): peers were given but no route to any
// of them is up.
func (n *Node) Warning() string {
	if n.ns != nil && n.peersWanted && n.ns.NumRoutes() == 0 {
		return "cluster: no route to any of cluster.peers"
	}
	return ""
}

// NodeInfo is one node as GET /broker lists it (a plain type of
// broker/info, so the dashboard need not import the cluster).
type NodeInfo = info.Node

// Nodes lists this node and the others it hears, this one first.
func (n *Node) Nodes() []NodeInfo {
	out := []NodeInfo{{Name: n.name, Self: true, Clients: n.clients(), MessagesPerSecond: n.ownRate(), LastSeen: time.Now().UTC()}}
	var others []NodeInfo
	for _, p := range *n.peers.Load() {
		others = append(others, NodeInfo{Name: p.name, Clients: p.clients, MessagesPerSecond: p.rate, LastSeen: p.seen.UTC()})
	}
	sort.Slice(others, func(i, j int) bool { return others[i].Name < others[j].Name })
	return append(out, others...)
}

// Routes returns the names of the nodes a non-retained message on name
// would be sent to now (sorted): what tests wait for after subscribing.
func (n *Node) Routes(name string) []string {
	var out []string
	for _, p := range *n.peers.Load() {
		if p.in != nil && p.in.matches(name) {
			out = append(out, p.name)
		}
	}
	sort.Strings(out)
	return out
}

func (n *Node) clients() int64 {
	if srv := n.srv.Load(); srv != nil {
		return atomic.LoadInt64(&srv.Info.ClientsConnected)
	}
	return 0
}

// goBackground runs f on a goroutine Close waits for, unless closing.
func (n *Node) goBackground(f func()) {
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	if n.closed {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}
