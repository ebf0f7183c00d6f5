package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/paho"
)

// process is `tether serve` running as a real process.
type process struct {
	cmd        *exec.Cmd
	mqtt, http string
	exited     chan error
	mu         sync.Mutex
	log        strings.Builder
}

// startProcess runs the binary on loopback ports chosen by the kernel and
// waits until it reports where it listens.
func startProcess(t *testing.T, env ...string) *process {
	t.Helper()
	return startProcessArgs(t, []string{"--allow-anonymous"}, env...)
}

// startProcessAuth is startProcess with anonymous MQTT off.
func startProcessAuth(t *testing.T, env ...string) *process {
	t.Helper()
	return startProcessArgs(t, nil, env...)
}

func startProcessArgs(t *testing.T, args []string, env ...string) *process {
	t.Helper()
	cmd := exec.Command(tetherBinary(t), append([]string{"serve", "--data-dir", t.TempDir(),
		"--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--log-format", "json"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, exited: make(chan error, 1)}
	addrs := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			// The start-up line lists every listener (SPEC §3).
			var l struct {
				Msg  string `json:"msg"`
				MQTT string `json:"mqtt"`
				HTTP string `json:"http"`
			}
			if json.Unmarshal(sc.Bytes(), &l) != nil || !strings.HasPrefix(l.Msg, "tether ready") {
				continue
			}
			addrs <- [2]string{strings.TrimPrefix(l.MQTT, "tcp://"), strings.TrimSuffix(strings.TrimPrefix(l.HTTP, "http://"), "/")}
		}
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case a := <-addrs:
		p.mqtt, p.http = a[0], a[1]
	case err := <-p.exited:
		t.Fatalf("tether exited at start-up: %v\n%s", err, p.logText())
	case <-time.After(20 * time.Second):
		t.Fatalf("tether did not report its addresses:\n%s", p.logText())
	}
	return p
}

func (p *process) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// TestSIGTERM: on SIGTERM the real binary sends MQTT 5 clients DISCONNECT
// 0x8B, closes 3.1.1 clients, and exits 0 within the grace period.
func TestSIGTERM(t *testing.T) {
	const grace = 3 * time.Second
	p := startProcess(t, "TETHER_MQTT_SHUTDOWN_GRACE="+grace.String())

	disconnects := make(chan byte, 2)
	for _, transport := range []string{"tcp", "ws"} {
		var conn net.Conn
		if transport == "tcp" {
			conn = dialTCP(t, p.mqtt)
		} else {
			conn = atomicWrites(t, dialWS(t, "ws://"+p.http+"/mqtt", nil))
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn,
			OnServerDisconnect: func(d *paho.Disconnect) { disconnects <- d.ReasonCode }})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: "sigterm-" + transport, KeepAlive: 30, CleanStart: true}); err != nil {
			t.Fatalf("connect over %s: %v", transport, err)
		}
		cancel()
		t.Cleanup(func() { <-c.Done() })
	}
	old := dialTCP(t, p.mqtt)
	rawHandshake(t, old, 4, "sigterm-311")

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		select {
		case code := <-disconnects:
			if code != 0x8B {
				t.Fatalf("DISCONNECT reason 0x%02x, want 0x8B (server shutting down)", code)
			}
		case <-time.After(grace):
			t.Fatalf("no DISCONNECT within %v:\n%s", grace, p.logText())
		}
	}
	if rest := expectClosed(t, old, grace); len(rest) != 0 {
		t.Fatalf("MQTT 3.1.1 client read %x, want a plain close", rest)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.logText())
		}
	case <-time.After(grace + 2*time.Second):
		t.Fatalf("still running %v after SIGTERM:\n%s", time.Since(start), p.logText())
	}
	if !strings.Contains(p.logText(), "tether stopped") {
		t.Fatalf("no orderly stop in the log:\n%s", p.logText())
	}
}

// TestShutdownUnderConnectStorm: clients connecting over TCP and
// WebSocket all through shutdown cannot make it hang or race (mochi
// issues 508 and 541); connections that arrive after it began are
// refused or closed.
func TestShutdownUnderConnectStorm(t *testing.T) {
	for round := 0; round < 3; round++ {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.MQTT.ShutdownGrace = 2 * time.Second
			a, err := startApp(cfg, testLogger())
			if err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var connected sync.Map
			for w := 0; w < 16; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						stormClient(a, w, i, &connected)
					}
				}()
			}
			// Let the storm build, then shut down in the middle of it.
			checkFor(t, 10*time.Second, func() error {
				n := 0
				connected.Range(func(_, _ any) bool { n++; return n < 50 })
				if n < 50 {
					return fmt.Errorf("only %d clients connected", n)
				}
				return nil
			})
			ctx, cancel := context.WithTimeout(context.Background(), cfg.MQTT.ShutdownGrace)
			defer cancel()
			start := time.Now()
			done := make(chan error, 1)
			go func() { done <- a.shutdown(ctx) }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("shutdown: %v", err)
				}
			case <-time.After(cfg.MQTT.ShutdownGrace + 3*time.Second):
				t.Fatalf("shutdown hung for %v", time.Since(start))
			}
			close(stop)
			wg.Wait()
		})
	}
}

// stormClient connects once, MQTT 5 or 3.1.1, over TCP or WebSocket, and
// reads until the broker closes the connection or a short while passes.
func stormClient(a *app, w, i int, connected *sync.Map) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var c net.Conn
	if (w+i)%2 == 0 {
		ws, _, err := websocket.Dial(ctx, wsURL(a), &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
		if err != nil {
			return
		}
		c = websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	} else {
		var d net.Dialer
		var err error
		if c, err = d.DialContext(ctx, "tcp", a.mqttAddr()); err != nil {
			return
		}
	}
	defer c.Close()
	version := byte(4 + (i % 2))
	id := fmt.Sprintf("storm-%d-%d", w, i)
	c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Write(rawConnect(version, id)); err != nil {
		return
	}
	if first, _, err := readRawPacket(c); err == nil && first == 0x20 {
		connected.Store(id, true)
	}
	_, _ = io.Copy(io.Discard, c)
}
