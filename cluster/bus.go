package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// startEmbedded starts this node's NATS server, routes on o.Listen to
// o.Peers. The node connects in-process; the server's client port, which
// its routing needs, is on loopback, on a port of the kernel's choosing,
// and takes only token, known to this process alone.
func startEmbedded(o *Options, token string, log *slog.Logger) (*server.Server, error) {
	host, port, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("cluster: cluster.listen %q: %w", o.Listen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("cluster: cluster.listen %q: port: %w", o.Listen, err)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	var routes []*url.URL
	for _, peer := range o.Peers {
		u, err := url.Parse("nats-route://" + peer)
		if err != nil {
			return nil, fmt.Errorf("cluster: cluster.peers %q: %w", peer, err)
		}
		if o.Secret != "" {
			u.User = url.UserPassword(routeUser, o.Secret)
		}
		routes = append(routes, u)
	}
	opts := &server.Options{
		ServerName:    o.Node,
		Host:          "127.0.0.1",
		Port:          server.RANDOM_PORT,
		Authorization: token,
		NoSigs:        true,
		MaxPayload:    int32(o.maxPayload()),
		MaxPending:    natsMaxPending, // the flow windows fit in it (flow.go)
		// The server's only client is this node, in-process. A write to
		// it that outlasts the write deadline (10 s) while the node reads
		// is resumed rather than taken for a slow consumer: closing the
		// node's bus connection loses all the server held for it. What
		// it holds is bounded by the flow windows, and MaxPending still
		// closes it past that, as does a deadline with nothing read.
		// (Under the race detector at load average 14 the node's reader
		// took over 10 s for 28 MB and 36 MB: TestClusterFlowControl at
		// the default wait lost 301 and 143 of 2,000 acknowledged
		// messages with the connections, 2 of 2 runs.)
		WriteTimeout:  server.WriteTimeoutPolicyRetry,
		WriteDeadline: o.writeDeadline, // 0: the server's default
		Cluster:       server.ClusterOpts{Name: "tether", Host: host, Port: p},
		Routes:        routes,
	}
	if err := routeTLS(o, opts); err != nil {
		return nil, err
	}
	if o.Secret != "" {
		// Routes this server accepts, and those it makes to the servers
		// it learns of, carry it.
		opts.Cluster.Username, opts.Cluster.Password = routeUser, o.Secret
	} else if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && opts.Cluster.TLSConfig == nil {
		log.Warn("cluster routes without a password: anyone who reaches cluster.listen joins the cluster and can publish anything; set cluster.secret", "listen", o.Listen)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cluster: NATS server: %w", err)
	}
	ns.SetLoggerV2(natsLog{log}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("cluster: NATS server on cluster.listen %s did not start (port in use?)", o.Listen)
	}
	return ns, nil
}

// routeUser is the user name of the routes; the secret is the password.
const routeUser = "tether"

// connect opens the node's connection to the bus: the embedded server
// in-process, or the external NATS, retried until it answers.
func (n *Node) connect(o *Options) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("tether-" + n.name),
		nats.NoEcho(), // a node hears the others, not itself
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				return // Close
			}
			n.m.busLost.Inc()
			n.log.Warn("cluster bus lost: messages in flight to or from this node may be lost", "error", err)
		}),
		nats.ReconnectHandler(func(*nats.Conn) {
			n.log.Info("cluster bus back")
			n.resetWindows() // what was in flight may be lost
			n.reintroduce()
		}),
		nats.ConnectHandler(func(*nats.Conn) {
			if n.ns != nil {
				n.log.Info("cluster bus connected", "routes", n.RouteAddr())
			} else {
				n.log.Info("cluster bus connected", "nats_url", redacted(o.NATSURL))
			}
			n.reintroduce()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if err == nats.ErrSlowConsumer {
				n.m.dropped.WithLabelValues("slow").Inc()
				return
			}
			n.log.Warn("cluster bus error", "error", err)
		}),
	}
	if n.ns != nil {
		return nats.Connect("", append(opts, nats.InProcessServer(inProcess{n.ns, o.busConn}), nats.Token(n.token))...)
	}
	return nats.Connect(o.NATSURL, append(opts, nats.RetryOnFailedConnect(true))...)
}

// inProcess hands the node's NATS connection the embedded server's
// in-process connection, through wrap when a test sets one.
type inProcess struct {
	ns   *server.Server
	wrap func(net.Conn) net.Conn
}

func (p inProcess) InProcessConn() (net.Conn, error) {
	c, err := p.ns.InProcessConn()
	if err != nil || p.wrap == nil {
		return c, err
	}
	return p.wrap(c), nil
}

// redacted is a NATS URL list without its passwords, for the log.
func redacted(urls string) string {
	if urls == "" {
		return ""
	}
	out := strings.Split(urls, ",")
	for i, s := range out {
		if u, err := url.Parse(strings.TrimSpace(s)); err == nil {
			out[i] = u.Redacted()
		}
	}
	return strings.Join(out, ",")
}

// natsLog is the embedded server's log, at Tether's levels: its notices
// and errors are detail (an unreachable peer is retried every second; the
// routes' state is on /readyz and GET /broker instead), its warnings
// warnings.
type natsLog struct{ l *slog.Logger }

func (g natsLog) Noticef(format string, v ...any) { g.l.Debug(fmt.Sprintf(format, v...)) }
func (g natsLog) Warnf(format string, v ...any)   { g.l.Warn(fmt.Sprintf(format, v...)) }
func (g natsLog) Fatalf(format string, v ...any)  { g.l.Error(fmt.Sprintf(format, v...)) }
func (g natsLog) Errorf(format string, v ...any)  { g.l.Debug(fmt.Sprintf(format, v...)) }
func (g natsLog) Debugf(format string, v ...any)  { g.l.Debug(fmt.Sprintf(format, v...)) }
func (g natsLog) Tracef(format string, v ...any)  { g.l.Debug(fmt.Sprintf(format, v...)) }
