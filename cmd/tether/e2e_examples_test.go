package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The client examples of docs/clients.md, kept as files that a test runs.
const examplesDir = "../../docs/examples"

// TestClientExamplesInDocs: docs/clients.md shows each example file whole,
// so what people copy is what TestClientExamples runs.
func TestClientExamplesInDocs(t *testing.T) {
	doc, err := os.ReadFile("../../docs/clients.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"mqttjs/device.js", "python/device.py", "go-paho/main.go", "esp32/tether_device.ino"} {
		b, err := os.ReadFile(filepath.Join(examplesDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(doc), string(b)) {
			t.Errorf("docs/clients.md does not show %s as it is", f)
		}
	}
}

// pythonWithPaho returns a Python interpreter that can import paho-mqtt:
// the one on PATH, or Debian's (python3-paho-mqtt installs into it).
func pythonWithPaho() (string, error) {
	var tried []string
	for _, py := range []string{"python3", "/usr/bin/python3"} {
		path, err := exec.LookPath(py)
		if err != nil {
			continue
		}
		if exec.Command(path, "-c", "import paho.mqtt.client").Run() == nil {
			return path, nil
		}
		tried = append(tried, path)
	}
	return "", fmt.Errorf("no python3 with paho-mqtt (tried %v; apt-get install python3-paho-mqtt)", tried)
}

// TestClientExamples runs each client example that can run here against
// a real server, as a registered device with its secret, over TCP and
// WebSocket, and finds its reading stored.
func TestClientExamples(t *testing.T) {
	a := startAuthApp(t)
	api := login(t, a, "admin", simAdminPassword)
	tcp, ws := "tcp://"+a.mqttAddr(), "ws://"+a.httpAddr()+"/mqtt"

	python, pyErr := pythonWithPaho()
	node, nodeErr := exec.LookPath("node")
	nodeModules, _ := filepath.Abs("../../testdata/node/node_modules")
	if nodeErr == nil {
		if _, err := os.Stat(filepath.Join(nodeModules, "mqtt")); err != nil {
			nodeErr = fmt.Errorf("MQTT.js not installed (npm ci --prefix testdata/node): %w", err)
		}
	}
	goBin := filepath.Join(t.TempDir(), "go-paho")
	goErr := exec.Command("go", "build", "-o", goBin, filepath.Join(examplesDir, "go-paho")).Run()

	for _, ex := range []struct {
		name, url string
		toolErr   error
		cmd       func() *exec.Cmd
	}{
		{"python-tcp", tcp, pyErr, func() *exec.Cmd { return exec.Command(python, filepath.Join(examplesDir, "python/device.py")) }},
		{"python-ws", ws, pyErr, func() *exec.Cmd { return exec.Command(python, filepath.Join(examplesDir, "python/device.py")) }},
		{"mqttjs-ws", ws, nodeErr, func() *exec.Cmd {
			c := exec.Command(node, filepath.Join(examplesDir, "mqttjs/device.js"))
			c.Env = append(os.Environ(), "NODE_PATH="+nodeModules)
			return c
		}},
		{"mqttjs-tcp", strings.Replace(tcp, "tcp://", "mqtt://", 1), nodeErr, func() *exec.Cmd {
			c := exec.Command(node, filepath.Join(examplesDir, "mqttjs/device.js"))
			c.Env = append(os.Environ(), "NODE_PATH="+nodeModules)
			return c
		}},
		{"go-paho-tcp", tcp, goErr, func() *exec.Cmd { return exec.Command(goBin) }},
		{"go-paho-ws", ws, goErr, func() *exec.Cmd { return exec.Command(goBin) }},
	} {
		t.Run(ex.name, func(t *testing.T) {
			requireTool(t, ex.name, ex.toolErr)
			id := "example-" + ex.name
			var reg struct {
				Secret string `json:"secret"`
			}
			if code := api.do(t, "POST", "/devices", map[string]string{"id": id, "name": id}, &reg); code/100 != 2 || reg.Secret == "" {
				t.Fatalf("register %s: %d", id, code)
			}
			cmd := ex.cmd()
			if cmd.Env == nil {
				cmd.Env = os.Environ()
			}
			cmd.Env = append(cmd.Env, "MQTT_URL="+ex.url, "DEVICE_ID="+id, "SECRET="+reg.Secret, "COUNT=1")
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("did not finish within 60s:\n%s", out)
			}
			if err != nil || !strings.Contains(string(out), "published") {
				t.Fatalf("%v\n%s", err, out)
			}
			checkFor(t, 10*time.Second, func() error {
				var d simDevice
				if code := api.do(t, "GET", "/devices/"+id, nil, &d); code != http.StatusOK {
					return fmt.Errorf("GET device: %d", code)
				}
				if _, ok := d.LastValues["temp"]; !ok {
					return fmt.Errorf("no reading stored: %+v", d)
				}
				return nil
			})
			// A wrong secret is refused, and the example says so.
			bad := ex.cmd()
			if bad.Env == nil {
				bad.Env = os.Environ()
			}
			bad.Env = append(bad.Env, "MQTT_URL="+ex.url, "DEVICE_ID="+id, "SECRET=wrong-secret", "COUNT=1")
			if out, err := bad.CombinedOutput(); err == nil {
				t.Errorf("with a wrong secret the example exited 0:\n%s", out)
			}
		})
	}
}
