package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The conformance matrix: independent clients against the built binary
// over TCP, TLS, WebSocket and secure WebSocket, MQTT 3.1.1 and 5, each
// running the same cases (conformCases). Clients: paho Go
// (github.com/eclipse/paho.mqtt.golang for 3.1.1, github.com/eclipse/
// paho.golang for 5), MQTT.js (testdata/node/conform.js), Python paho 1.x
// (Debian's python3-paho-mqtt, testdata/python/conform.py) and
// mosquitto_pub/sub/rr (TCP and TLS; they have no WebSocket client). A case
// a version does not have (user properties in 3.1.1) is "n/a".
//
//	go test ./cmd/tether -run TestConformanceMatrix -v    # prints the matrix
//
// A missing client skips its rows locally and fails them in CI (CI=true).

// conformCases are the matrix's columns, in order.
var conformCases = []string{"connect", "qos0", "qos1", "qos2", "retained", "will", "user_properties",
	"request_response", "shared", "subscription_id", "topic_alias", "message_expiry", "session_resume"}

// only5 are the cases MQTT 3.1.1 has no way to express.
var only5 = map[string]bool{"user_properties": true, "request_response": true, "subscription_id": true,
	"topic_alias": true, "message_expiry": true}

// conformEnv is the binary with every listener on, and the CA that signed
// its certificate.
type conformEnv struct {
	p                 *tetherProc
	tcp, tls, ws, wss string // host:port
	ca                string // PEM file
	roots             *x509.CertPool
	mu                sync.Mutex
	results           map[string]map[string]string // row → case → ok | FAIL | n/a
	rowsOrder         []string
}

func startConformEnv(t *testing.T) *conformEnv {
	t.Helper()
	certPEM, keyPEM, err := devCertificate(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := newTetherProc(t, tetherBinary(t))
	e := &conformEnv{p: p, ca: filepath.Join(p.dir, "cert.pem"), tls: freeAddr(t), wss: freeAddr(t),
		results: map[string]map[string]string{}}
	key := filepath.Join(p.dir, "key.pem")
	if err := os.WriteFile(e.ca, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	e.roots = x509.NewCertPool()
	e.roots.AppendCertsFromPEM(certPEM)
	p.args = []string{"--tls-addr", e.tls, "--https-addr", e.wss, "--tls-cert", e.ca, "--tls-key", key}
	p.start(t)
	e.tcp, e.ws = p.mqtt, p.http
	return e
}

func (e *conformEnv) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: e.roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// record notes one case's result for the matrix.
func (e *conformEnv) record(row, c, result string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.results[row] == nil {
		e.results[row] = map[string]string{}
		e.rowsOrder = append(e.rowsOrder, row)
	}
	e.results[row][c] = result
}

// table renders the matrix.
func (e *conformEnv) table() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	rows := append([]string(nil), e.rowsOrder...)
	sort.Strings(rows)
	var b strings.Builder
	fmt.Fprintf(&b, "| client / version / transport | %s |\n|---|%s\n", strings.Join(conformCases, " | "), strings.Repeat("---|", len(conformCases)))
	for _, r := range rows {
		cells := make([]string, len(conformCases))
		for i, c := range conformCases {
			if cells[i] = e.results[r][c]; cells[i] == "" {
				cells[i] = "—"
			}
		}
		fmt.Fprintf(&b, "| %s | %s |\n", r, strings.Join(cells, " | "))
	}
	return b.String()
}

// runCase runs one case as a subtest and records its result.
func (e *conformEnv) runCase(t *testing.T, row string, v5 bool, c string, f func(t *testing.T)) {
	if !v5 && only5[c] {
		e.record(row, c, "n/a")
		return
	}
	if t.Run(c, f) {
		e.record(row, c, "ok")
	} else {
		e.record(row, c, "FAIL")
	}
}

var conformTransports = []string{"tcp", "tls", "ws", "wss"}

func TestConformanceMatrix(t *testing.T) {
	e := startConformEnv(t)
	t.Cleanup(func() { t.Logf("conformance matrix:\n%s", e.table()) })
	// The clients run side by side (each its rows in turn): external
	// processes spend most of their time starting.
	t.Run("clients", func(t *testing.T) {
		t.Run("paho-go", func(t *testing.T) { t.Parallel(); conformPahoGo(t, e) })
		t.Run("mqtt.js", func(t *testing.T) { t.Parallel(); conformScript(t, e, "mqtt.js") })
		t.Run("python-paho-1", func(t *testing.T) { t.Parallel(); conformScript(t, e, "python-paho-1") })
		t.Run("mosquitto", func(t *testing.T) { t.Parallel(); conformMosquitto(t, e) })
	})
}

// conformScript runs a script client's cases for every version and
// transport and turns its lines ("CASE ok|n/a|fail: why") into subtests.
func conformScript(t *testing.T, e *conformEnv, client string) {
	var argv func(v5 bool, transport string) []string
	switch client {
	case "mqtt.js":
		script := strings.Replace(mqttJS(t), "mqttjs.js", "conform.js", 1)
		urls := map[string]string{"tcp": "mqtt://" + e.tcp, "tls": "mqtts://" + e.tls,
			"ws": "ws://" + e.ws + "/mqtt", "wss": "wss://" + e.wss + "/mqtt"}
		argv = func(v5 bool, tr string) []string {
			a := []string{"node", script, urls[tr], "--prefix", "js-" + tr}
			if tr == "tls" || tr == "wss" {
				a = append(a, "--ca", e.ca)
			}
			if v5 {
				a = append(a, "--v5")
			}
			return a
		}
	case "python-paho-1":
		py := pythonPaho1(t)
		script, _ := filepath.Abs(filepath.Join("..", "..", "testdata", "python", "conform.py"))
		addrs := map[string]string{"tcp": e.tcp, "tls": e.tls, "ws": e.ws, "wss": e.wss}
		argv = func(v5 bool, tr string) []string {
			kind := map[bool]string{false: "tcp", true: "websockets"}[tr == "ws" || tr == "wss"]
			a := []string{py, script, "127.0.0.1", port(addrs[tr]), kind, "--prefix", "py-" + tr}
			if tr == "tls" || tr == "wss" {
				a = append(a, "--tls", e.ca)
			}
			if v5 {
				a = append(a, "--v5")
			}
			return a
		}
	}
	for _, v5 := range []bool{false, true} {
		for _, tr := range conformTransports {
			row := fmt.Sprintf("%s / %s / %s", client, versionName(v5), tr)
			t.Run(versionName(v5)+"-"+tr, func(t *testing.T) {
				a := argv(v5, tr)
				out, err := exec.Command(a[0], a[1:]...).CombinedOutput()
				got := map[string]string{}
				for _, l := range strings.Split(string(out), "\n") {
					if name, res, ok := strings.Cut(l, " "); ok {
						got[name] = res
					}
				}
				for _, c := range conformCases {
					e.runCase(t, row, v5, c, func(t *testing.T) {
						if res := got[c]; res != "ok" {
							t.Errorf("%s: %q", c, res)
						}
					})
				}
				if err != nil && !t.Failed() {
					t.Errorf("%s: %v\n%s", strings.Join(a, " "), err, out)
				}
			})
		}
	}
}

func versionName(v5 bool) string {
	if v5 {
		return "5"
	}
	return "3.1.1"
}

func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// pythonPaho1 returns Debian's python3 with paho-mqtt 1.x.
func pythonPaho1(t *testing.T) string {
	t.Helper()
	py := "/usr/bin/python3"
	out, err := exec.Command(py, "-c", "import paho.mqtt; print(paho.mqtt.__version__)").Output()
	if err == nil && !strings.HasPrefix(string(out), "1.") {
		err = fmt.Errorf("paho-mqtt %s, not 1.x", strings.TrimSpace(string(out)))
	}
	requireTool(t, "python3-paho-mqtt 1.x (apt-get install -y python3-paho-mqtt)", err)
	return py
}
