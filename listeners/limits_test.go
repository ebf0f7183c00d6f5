package listeners

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testmqtt"
	"github.com/tether-iot/tether/listeners/forwarded"
)

func tcpAddr(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 1234} }

func TestLimiterAdmit(t *testing.T) {
	tests := []struct {
		name   string
		opts   LimitOptions
		from   []string // one connection attempt each, all kept open
		admits []bool
	}{
		{"unlimited", LimitOptions{}, []string{"10.0.0.1", "10.0.0.1", "10.0.0.1"}, []bool{true, true, true}},
		{"total", LimitOptions{MaxConnections: 2}, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}, []bool{true, true, false}},
		{"per address", LimitOptions{MaxConnectionsPerIP: 2},
			[]string{"10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"}, []bool{true, true, false, true}},
		{"rate per address", LimitOptions{ConnectionRatePerIP: 2},
			[]string{"10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"}, []bool{true, true, false, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLimiter(tt.opts)
			for i, ip := range tt.from {
				_, ok := l.admit(tcpAddr(ip))
				if ok != tt.admits[i] {
					t.Fatalf("attempt %d from %s: admitted %v, want %v", i, ip, ok, tt.admits[i])
				}
			}
		})
	}
}

func TestLimiterReleaseAndForget(t *testing.T) {
	l := NewLimiter(LimitOptions{MaxConnectionsPerIP: 1, MaxConnections: 1})
	rel, ok := l.admit(tcpAddr("10.0.0.1"))
	if !ok {
		t.Fatal("first connection refused")
	}
	if _, ok := l.admit(tcpAddr("10.0.0.1")); ok {
		t.Fatal("second connection admitted")
	}
	rel()
	rel() // idempotent
	if len(l.addrs) != 0 || l.open != 0 {
		t.Fatalf("after release: %d addresses, %d open", len(l.addrs), l.open)
	}
	if _, ok := l.admit(tcpAddr("10.0.0.1")); !ok {
		t.Fatal("connection refused after release")
	}
}

func TestLimiterRateRefills(t *testing.T) {
	l := NewLimiter(LimitOptions{ConnectionRatePerIP: 1})
	now := time.Now()
	a := tcpAddr("10.0.0.9")
	if _, ok := l.admit(a); !ok {
		t.Fatal("first refused")
	}
	if _, ok := l.admit(a); ok {
		t.Fatal("second within the second admitted")
	}
	// Age the bucket instead of sleeping.
	l.mu.Lock()
	l.addrs["10.0.0.9"].last = now.Add(-1100 * time.Millisecond)
	l.mu.Unlock()
	if _, ok := l.admit(a); !ok {
		t.Fatal("refused after the bucket refilled")
	}
}

// Over real sockets: a TCP listener with a per-address cap closes the
// connections beyond it at once and keeps serving the others.
func TestTCPConnectionCap(t *testing.T) {
	lim := NewLimiter(LimitOptions{MaxConnectionsPerIP: 3})
	l := NewTCP("127.0.0.1:0", &TCPOptions{Limits: lim, ConnectTimeout: 5 * time.Second})
	if err := l.Init(nil); err != nil {
		t.Fatal(err)
	}
	// A stand-in engine: echo until the client closes. CloseConns waits
	// for every connection it was handed.
	go l.Serve(func(id string, c net.Conn) error {
		_, err := io.Copy(c, c)
		return err
	})
	defer func() {
		l.Stop()
		l.CloseConns()
	}()
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for i := range 10 {
		c, err := net.Dial("tcp", l.Address())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, werr := c.Write([]byte("x"))
		buf := make([]byte, 1)
		_, rerr := io.ReadFull(c, buf)
		served := werr == nil && rerr == nil
		if want := i < 3; served != want {
			t.Fatalf("connection %d: served %v, want %v (%v %v)", i, served, want, werr, rerr)
		}
	}
	if got := int64(testmqtt.Counter(t, lim.refusedPerIP)); got != 7 {
		t.Errorf("refusals counted: %d, want 7", got)
	}
}

func TestHTTPLimit(t *testing.T) {
	lim := NewHTTPLimit(1024)
	h := lim.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, "bad body", http.StatusRequestEntityTooLarge)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, tt := range []struct {
		name string
		body io.Reader
		want int
	}{
		{"small", strings.NewReader("{}"), http.StatusNoContent},
		{"declared too large", strings.NewReader(strings.Repeat("x", 2048)), http.StatusRequestEntityTooLarge},
		{"streamed too large", io.MultiReader(strings.NewReader(strings.Repeat("x", 4096))), http.StatusRequestEntityTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", srv.URL, tt.body)
			if tt.name == "streamed too large" {
				req.ContentLength = -1
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	if got := int64(testmqtt.Counter(t, lim.tooLarge)); got != 2 {
		t.Errorf("counted %d refusals, want 2", got)
	}
}

// TestLimiterBanned: a banned address is refused even with no limits set,
// and counted apart; others are admitted.
func TestLimiterBanned(t *testing.T) {
	l := NewLimiter(LimitOptions{})
	l.SetBanned(func(ip string) bool { return ip == "203.0.113.7" })
	if _, ok := l.admit(tcpAddr("203.0.113.7")); ok {
		t.Fatal("a banned address was admitted")
	}
	if _, ok := l.admit(tcpAddr("203.0.113.8")); !ok {
		t.Fatal("another address was refused")
	}
	if int64(testmqtt.Counter(t, l.refusedBanned)) != 1 || int64(testmqtt.Counter(t, l.refusedTotal))+int64(testmqtt.Counter(t, l.refusedPerIP))+int64(testmqtt.Counter(t, l.refusedRate)) != 0 {
		t.Fatal("refusals counted under the wrong limit")
	}
}

// An IPv6 client owns a /64: over real sockets (IPv6 loopback, with a
// PROXY protocol header naming each connection's client as a load
// balancer would), limits.max_pending_connections_per_ip holds the
// addresses of one /64 to one count, and another /64 to its own.
func TestPendingConnectionsIPv6By64(t *testing.T) {
	probe, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	probe.Close()
	from, err := forwarded.ParseProxies([]string{"::1"})
	if err != nil {
		t.Fatal(err)
	}
	lim := NewLimiter(LimitOptions{MaxPendingPerIP: 2})
	l := NewTCP("[::1]:0", &TCPOptions{Limits: lim, ConnectTimeout: 5 * time.Second, ProxyProtocolFrom: from})
	if err := l.Init(nil); err != nil {
		t.Fatal(err)
	}
	// A stand-in engine that never answers a CONNECT: each connection
	// keeps its pending place until the client closes it.
	go l.Serve(func(id string, c net.Conn) error {
		_, err := io.Copy(io.Discard, c)
		return err
	})
	defer func() {
		l.Stop()
		l.CloseConns()
	}()
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	// served dials as src and reports whether the listener handed the
	// connection on (Accepted) or refused it (Refused).
	served := func(src string) bool {
		t.Helper()
		st := l.Stats()
		accepted := st.Accepted.Load()
		before := accepted + st.Refused.Load()
		c, err := net.Dial("tcp6", l.Address())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		if _, err := io.WriteString(c, "PROXY TCP6 "+src+" ::1 40000 1883\r\n"); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(20 * time.Second); st.Accepted.Load()+st.Refused.Load() == before; {
			if time.Now().After(deadline) {
				t.Fatalf("connection from %s: neither accepted nor refused", src)
			}
			time.Sleep(time.Millisecond)
		}
		return st.Accepted.Load() > accepted
	}
	for _, c := range []struct {
		src  string
		want bool
	}{
		{"2001:db8:1:2::1", true},
		{"2001:db8:1:2:ffff::7", true},
		{"2001:db8:1:2::3", false}, // a third address of the same /64
		{"2001:db8:1:3::1", true},  // another /64
		{"::ffff:192.0.2.1", true},
	} {
		if got := served(c.src); got != c.want {
			t.Fatalf("connection from %s: served %v, want %v", c.src, got, c.want)
		}
	}
	if got := int64(testmqtt.Counter(t, lim.refusedPending)); got != 1 {
		t.Errorf("refusals counted: %d, want 1", got)
	}
}
