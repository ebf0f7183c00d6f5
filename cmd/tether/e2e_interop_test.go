package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Interoperability with other clients: mosquitto_sub/mosquitto_pub (C,
// TCP and TLS) and MQTT.js (node, WebSocket and secure WebSocket), through
// one broker, both ways, MQTT 3.1.1 and 5.
//
// Needs /usr/bin/mosquitto_{sub,pub} (Debian: mosquitto-clients), node, and
// `npm ci --prefix testdata/node` run at the repository root. Missing, the
// tests skip locally and fail when CI=true.

// mqttJS returns the path of the MQTT.js command-line script.
func mqttJS(t *testing.T) string {
	t.Helper()
	_, err := exec.LookPath("node")
	requireTool(t, "node", err)
	script, _ := filepath.Abs(filepath.Join("..", "..", "testdata", "node", "mqttjs.js"))
	_, err = os.Stat(filepath.Join(filepath.Dir(script), "node_modules", "mqtt", "package.json"))
	requireTool(t, "MQTT.js (run: npm ci --prefix testdata/node)", err)
	return script
}

func mosquitto(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	requireTool(t, name+" (Debian package mosquitto-clients)", err)
	return p
}

// subscriber is a client process that prints received payloads on stdout.
type subscriber struct {
	cmd   *exec.Cmd
	lines chan string
}

// startSubscriber runs cmd and waits until a line of its output satisfies
// ready, which says the subscription is in place.
func startSubscriber(t *testing.T, cmd *exec.Cmd, ready func(string) bool) *subscriber {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &subscriber{cmd: cmd, lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("%s exited before subscribing: %s", cmd.Path, stderr.String())
			}
			if ready(l) {
				return s
			}
		case <-timeout:
			t.Fatalf("%s did not subscribe: %s", cmd.Path, stderr.String())
		}
	}
}

// expectLine waits for the subscriber to print want.
func (s *subscriber) expectLine(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("subscriber exited before printing %q", want)
			}
			if l == want {
				return
			}
		case <-timeout:
			t.Fatalf("subscriber did not print %q", want)
		}
	}
}

func runClient(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
}

func TestInteropMosquittoMQTTJS(t *testing.T) {
	script := mqttJS(t)
	sub, pub := mosquitto(t, "mosquitto_sub"), mosquitto(t, "mosquitto_pub")
	cfg := testConfig(t)
	ca := withTLS(t, &cfg)
	a := startTestApp(t, cfg)
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

	for _, secure := range []bool{false, true} {
		for _, v5 := range []bool{false, true} {
			name := fmt.Sprintf("tcp+ws/v%d", map[bool]int{false: 3, true: 5}[v5])
			// mosquitto over TCP or TLS; MQTT.js over ws or wss.
			mosq := []string{"-h", "127.0.0.1", "-p", port(a.mqttAddr()), "-V", "mqttv311"}
			jsURL := "ws://127.0.0.1:" + port(a.httpAddr()) + "/mqtt"
			var jsOpts []string
			if secure {
				name = strings.Replace(name, "tcp+ws", "tls+wss", 1)
				mosq = []string{"-h", "127.0.0.1", "-p", port(a.tlsAddr()), "-V", "mqttv311", "--cafile", ca}
				jsURL = "wss://127.0.0.1:" + port(a.httpsAddr()) + "/mqtt"
				jsOpts = []string{"--ca", ca}
			}
			if v5 {
				mosq[5] = "mqttv5"
				jsOpts = append(jsOpts, "--v5")
			}
			t.Run(name+"/mqttjs_to_mosquitto", func(t *testing.T) {
				topic := nextID("interop/js-to-mosq")
				args := append(append([]string{}, mosq...), "-t", topic, "-q", "1", "-C", "1", "-d", "-i", nextID("mosq-sub"))
				// stdbuf: mosquitto_sub's -d lines are block-buffered on a pipe.
				s := startSubscriber(t, exec.Command("stdbuf", append([]string{"-oL", sub}, args...)...),
					func(l string) bool { return strings.Contains(l, "received SUBACK") })
				msg := "hello from MQTT.js over " + jsURL[:strings.Index(jsURL, ":")]
				runClient(t, exec.Command("node", append([]string{script, "pub", jsURL, topic, msg, "--qos", "1"}, jsOpts...)...))
				s.expectLine(t, msg)
			})
			t.Run(name+"/mosquitto_to_mqttjs", func(t *testing.T) {
				topic := nextID("interop/mosq-to-js")
				s := startSubscriber(t, exec.Command("node", append([]string{script, "sub", jsURL, topic, "--qos", "1"}, jsOpts...)...),
					func(l string) bool { return l == "subscribed" })
				msg := "hello from mosquitto_pub"
				args := append(append([]string{}, mosq...), "-t", topic, "-q", "1", "-m", msg, "-i", nextID("mosq-pub"))
				runClient(t, exec.Command(pub, args...))
				s.expectLine(t, msg)
			})
		}
	}
}
