package listeners

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/internal/addrkey"
)

// HTTPLimit caps the size of HTTP request bodies. A request that declares
// a larger body is answered 413 at once; one that sends more than it
// declared (or streams without a length) fails its read at the limit, and
// the handler answers as it does for any unreadable body. Both are counted
// in tether_http_requests_limited_total.
type HTTPLimit struct {
	max      int64
	tooLarge prometheus.Counter
}

// NewHTTPLimit returns a limit of maxBody bytes per request body.
func NewHTTPLimit(maxBody int64) *HTTPLimit {
	return &HTTPLimit{max: maxBody, tooLarge: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_http_requests_limited_total",
		Help: "HTTP requests refused for a body over limits.http_max_body_bytes."})}
}

// Handler wraps next with the limit.
func (l *HTTPLimit) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > l.max {
			l.tooLarge.Inc()
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			_, _ = io.WriteString(w, `{"error":{"code":"body_too_large","message":"request body over `+
				strconv.FormatInt(l.max, 10)+` bytes"}}`+"\n")
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &countedBody{ReadCloser: http.MaxBytesReader(w, r.Body, l.max), l: l}
		}
		next.ServeHTTP(w, r)
	})
}

// countedBody counts the first read that hits the limit.
type countedBody struct {
	io.ReadCloser
	l       *HTTPLimit
	counted bool
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var mbe *http.MaxBytesError
	if err != nil && !b.counted && errors.As(err, &mbe) {
		b.counted = true
		b.l.tooLarge.Inc()
	}
	return n, err
}

// Describe implements prometheus.Collector.
func (l *HTTPLimit) Describe(ch chan<- *prometheus.Desc) { l.tooLarge.Describe(ch) }

// Collect implements prometheus.Collector.
func (l *HTTPLimit) Collect(ch chan<- prometheus.Metric) { l.tooLarge.Collect(ch) }

// PendingListener holds the HTTP connections ln accepts to the limiter's
// MaxPendingPerIP, per address: one over it is closed at once, before a
// byte is read, and counted (tether_connections_limited_total{limit=
// "max_pending_connections_per_ip"}). A connection keeps its place until
// it closes (idle keep-alive included: http.Server holds those for its
// IdleTimeout), or until it becomes MQTT over WebSocket, which the
// WebSocket listener then admits as MQTT. Addresses exempt reports
// (trusted reverse proxies, whose clients all share their address) are
// not held to it. A nil limiter or no limit returns ln as it is.
func (l *Limiter) PendingListener(ln net.Listener, exempt func(netip.Addr) bool) net.Listener {
	if l == nil || l.opts.MaxPendingPerIP <= 0 {
		return ln
	}
	return &pendingListener{Listener: ln, lim: l, exempt: exempt}
}

type pendingListener struct {
	net.Listener
	lim    *Limiter
	exempt func(netip.Addr) bool
}

func (l *pendingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if a, ok := addrkey.Addr(c.RemoteAddr().String()); ok && l.exempt != nil && l.exempt(a) {
			return c, nil
		}
		release, ok := l.lim.admitPending(c.RemoteAddr())
		if !ok {
			_ = c.Close()
			continue
		}
		return &pendingConn{Conn: c, release: release}, nil
	}
}

// pendingConn is an HTTP connection holding a place; Close releases it.
type pendingConn struct {
	net.Conn
	release func() // idempotent
}

func (c *pendingConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// NetConn is the connection underneath (as tls.Conn's).
func (c *pendingConn) NetConn() net.Conn { return c.Conn }

// WriteBuffers writes v through the connection underneath (buffersWriter).
func (c *pendingConn) WriteBuffers(v *net.Buffers) (int64, error) { return writeBuffers(c.Conn, v) }

// releasePending releases the place of the HTTP connection under conn (a
// hijacked one, under TLS or the write timeout's wrapper), if it holds one.
func releasePending(conn net.Conn) {
	for conn != nil {
		if p, ok := conn.(*pendingConn); ok {
			p.release()
			return
		}
		u, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			return
		}
		conn = u.NetConn()
	}
}
