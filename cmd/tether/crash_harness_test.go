package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// The crash harness runs the real binary as a child process, kills it
// with SIGKILL, and starts it again on the same data directory and ports.
// TestCrash builds the binary once and runs each scenario as a subtest:
//
//	go test -race -run Crash ./cmd/tether/
//	TETHER_CRASH_LOOPS=20 go test -race -run Crash/loop ./cmd/tether/

// buildTether builds the binary into dir.
func buildTether(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "tether")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// freeAddr returns a loopback address with a port free at the time, for
// a child process to listen on. The port comes from below the kernel's
// ephemeral range: a port the kernel picked for 127.0.0.1:0 is in that
// range, and between this close and the child's bind an outgoing
// connection of any test could take it as its source port ("address
// already in use", seen once in a few hundred cluster runs). Ports handed
// out once are not handed out again in this process.
func freeAddr(t *testing.T) string {
	t.Helper()
	freePorts.Lock()
	defer freePorts.Unlock()
	if freePorts.used == nil {
		freePorts.used = map[int]bool{}
		freePorts.next = 20000 + rand.IntN(10000)
	}
	for range 10000 {
		port := freePorts.next
		freePorts.next++
		if freePorts.next >= 32000 {
			freePorts.next = 20000
		}
		if freePorts.used[port] {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		freePorts.used[port] = true
		return addr
	}
	t.Fatal("no free port between 20000 and 32000")
	return ""
}

var freePorts struct {
	sync.Mutex
	used map[int]bool
	next int
}

// tetherProc is one data directory and its ports, served by a child
// process that can be killed and started again.
type tetherProc struct {
	bin, dir, mqtt, http string
	env                  []string
	// args are added after the default flags (which allow anonymous
	// clients): "--allow-anonymous=false" turns that off.
	args []string

	cmd    *exec.Cmd
	exited chan error
	logf   *os.File
	runs   int
}

func newTetherProc(t *testing.T, bin string, env ...string) *tetherProc {
	p := &tetherProc{bin: bin, dir: t.TempDir(), mqtt: freeAddr(t), http: freeAddr(t), env: env}
	t.Cleanup(func() {
		if p.running() {
			p.cmd.Process.Kill()
			<-p.exited
		}
		if p.logf != nil {
			p.logf.Close()
		}
	})
	return p
}

func (p *tetherProc) dbPath() string { return filepath.Join(p.dir, "data", "tether.db") }

// sessionsPath is the session store's file.
func (p *tetherProc) sessionsPath() string { return filepath.Join(p.dir, "data", "sessions.db") }

func (p *tetherProc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		return false
	default:
		return true
	}
}

// start runs the server and waits until /readyz answers 200.
func (p *tetherProc) start(t *testing.T) {
	t.Helper()
	p.runs++
	if p.logf != nil {
		p.logf.Close()
	}
	f, err := os.Create(filepath.Join(p.dir, fmt.Sprintf("run-%d.log", p.runs)))
	if err != nil {
		t.Fatal(err)
	}
	p.logf = f
	p.cmd = exec.Command(p.bin, append([]string{"serve", "--data-dir", filepath.Join(p.dir, "data"),
		"--mqtt-addr", p.mqtt, "--http-addr", p.http, "--tls-addr", "off", "--https-addr", "off",
		"--allow-anonymous", "--log-level", "warn"}, p.args...)...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, c chan error) { c <- cmd.Wait() }(p.cmd, p.exited)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if !p.running() {
			err := <-p.exited
			p.exited <- err // for running() and the cleanup
			t.Fatalf("tether exited during start-up: %v\n%s", err, p.log())
		}
		if resp, err := http.Get("http://" + p.http + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			p.kill(t)
			t.Fatalf("tether not ready after 30s\n%s", p.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *tetherProc) log() string {
	if p.logf == nil {
		return ""
	}
	b, _ := os.ReadFile(p.logf.Name())
	return string(b)
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *tetherProc) kill(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	p.exited <- nil
}

// stop sends SIGTERM and expects a clean exit.
func (p *tetherProc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Errorf("tether exited with %v after SIGTERM\n%s", err, p.log())
		}
	case <-time.After(20 * time.Second):
		p.kill(t)
		t.Errorf("tether did not exit within 20s of SIGTERM\n%s", p.log())
	}
}

// integrityCheck opens the (stopped) server's database and runs
// PRAGMA integrity_check.
func integrityCheck(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&res); err != nil {
		t.Fatalf("integrity_check: %v", err)
	}
	if res != "ok" {
		t.Fatalf("integrity_check: %s", res)
	}
}

// payloadSet is a set of payloads, safe for clients' goroutines.
type payloadSet struct {
	mu sync.Mutex
	m  map[string]bool
	// last is, per publisher (the payload's prefix before its last '-'),
	// the highest number seen; disorder counts new payloads that came
	// after a higher one of the same publisher.
	last     map[string]int
	disorder int
	example  string
}

func (s *payloadSet) add(p string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m, s.last = map[string]bool{}, map[string]int{}
	}
	if s.m[p] {
		return // a duplicate (at least once)
	}
	s.m[p] = true
	if i := strings.LastIndexByte(p, '-'); i > 0 {
		if n, err := strconv.Atoi(p[i+1:]); err == nil {
			if last, ok := s.last[p[:i]]; ok && n < last {
				s.disorder++
				s.example = fmt.Sprintf("%s after %s-%d", p, p[:i], last)
			} else {
				s.last[p[:i]] = n
			}
		}
	}
}

// outOfOrder returns how many payloads arrived after a later one of the
// same publisher, and one example.
func (s *payloadSet) outOfOrder() (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.disorder, s.example
}

func (s *payloadSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// missing returns how many of want's payloads s lacks, and one of them.
func (s *payloadSet) missing(want *payloadSet) (int, string) {
	want.mu.Lock()
	defer want.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	n, one := 0, ""
	for p := range want.m {
		if !s.m[p] {
			n++
			one = p
		}
	}
	return n, one
}

// crashSub3 is a persistent MQTT 3.1.1 subscriber (clean session off).
func crashSub3(t *testing.T, addr, id string, got *payloadSet) paho3.Client {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(true).
		SetConnectTimeout(5 * time.Second).SetKeepAlive(30 * time.Second).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { got.add(string(m.Payload())) })
	c := paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	return c
}

// crashSub5 is a persistent MQTT 5 subscriber (session expiry one hour).
func crashSub5(t *testing.T, addr, id string, got *payloadSet) *paho.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			got.add(string(p.Packet.Payload))
			return true, nil
		}},
	})
	expiry := uint32(3600)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
	if err != nil {
		conn.Close()
		t.Fatalf("connect %s: %v", id, err)
	}
	if ca.ReasonCode != 0 {
		t.Fatalf("connect %s: CONNACK 0x%02x", id, ca.ReasonCode)
	}
	return c
}

func closeSub5(c *paho.Client) {
	select {
	case <-c.Done():
	default:
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	}
	<-c.Done()
}

// crashPub3 is a clean-session 3.1.1 publisher.
func crashPub3(t *testing.T, addr, id string) paho3.Client {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetKeepAlive(30 * time.Second).SetWriteTimeout(5 * time.Second)
	c := paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	return c
}

// publishAcked publishes count QoS 1 messages "prefix-i" keeping up to
// window in flight, and adds each one the broker acknowledged to acked.
// It returns when all have been answered or the connection is gone.
func publishAcked(c paho3.Client, topic, prefix string, count, window int, acked *payloadSet, stop <-chan struct{}) {
	type pending struct {
		tok paho3.Token
		p   string
	}
	var inflight []pending
	settle := func(n int) {
		for len(inflight) > n {
			f := inflight[0]
			inflight = inflight[1:]
			if f.tok.WaitTimeout(10*time.Second) && f.tok.Error() == nil {
				acked.add(f.p)
			}
		}
	}
	for i := 0; i < count; i++ {
		select {
		case <-stop:
			settle(0)
			return
		default:
		}
		if !c.IsConnectionOpen() {
			break
		}
		p := fmt.Sprintf("%s-%d", prefix, i)
		inflight = append(inflight, pending{c.Publish(topic, 1, false, p), p})
		settle(window - 1)
	}
	settle(0)
}

// subscribe5 subscribes c to filter at QoS 1.
func subscribe5(t *testing.T, c *paho.Client, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe %s: SUBACK %v", filter, sa.Reasons)
	}
}

// execTether returns a command running the binary with args.
func execTether(bin string, args ...string) *exec.Cmd { return exec.Command(bin, args...) }
