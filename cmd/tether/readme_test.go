package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// walkthroughMarker precedes each README shell block the walkthrough test
// runs.
const walkthroughMarker = "<!-- test: walkthrough -->"

// markedBlocks returns the ```sh blocks of a Markdown file that follow a
// line holding marker.
func markedBlocks(t *testing.T, path, marker string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []string
	var cur *strings.Builder
	armed := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		case strings.TrimSpace(line) == marker:
			armed = true
		case armed && strings.TrimSpace(line) == "```sh":
			cur, armed = &strings.Builder{}, false
		case armed && strings.TrimSpace(line) != "":
			t.Fatalf("%s: %s is not followed by a ```sh block but by %q", path, marker, line)
		}
	}
	if cur != nil {
		t.Fatalf("%s: unterminated block", path)
	}
	return blocks
}

// TestReadmeWalkthrough runs the README's walkthrough as a newcomer
// would paste it, with bash, against a real server started as the README
// says (TETHER_ADMIN_PASSWORD, `tether serve`), on ports chosen by the
// test and given to the blocks through HTTP_PORT and MQTT_PORT.
func TestReadmeWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq", "mosquitto_pub", "mosquitto_sub"} {
		_, err := exec.LookPath(tool)
		requireTool(t, tool, err)
	}
	blocks := markedBlocks(t, "../../README.md", walkthroughMarker)
	if len(blocks) < 4 {
		t.Fatalf("README has %d walkthrough blocks", len(blocks))
	}
	bin := tetherBinary(t)
	srv := startWalkthroughServer(t, bin, "TETHER_ADMIN_PASSWORD=change-me-please")

	var script strings.Builder
	script.WriteString("set -eo pipefail\n")
	for i, b := range blocks {
		fmt.Fprintf(&script, "echo '### block %d' >&2\n%s", i+1, b)
	}
	cmd := exec.Command("bash", "-c", script.String())
	cmd.Dir = t.TempDir() // files the blocks write land here
	_, mqttPort, _ := strings.Cut(srv.mqtt, ":")
	_, httpPort, _ := strings.Cut(srv.http, ":")
	cmd.Env = append(os.Environ(),
		"PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"HTTP_PORT="+httpPort, "MQTT_PORT="+mqttPort,
		"TETHER_SERVER=", "TETHER_TOKEN=",
		"XDG_CONFIG_HOME="+t.TempDir(), // no saved login of the developer's (tether login)
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the walkthrough failed: %v\n%s\nserver log:\n%s", err, out.String(), srv.log())
		}
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the walkthrough did not finish in 3 minutes:\n%s", out.String())
	}
	t.Logf("walkthrough output:\n%s", out.String())

	// What the blocks did, checked through the API rather than by parsing
	// their output: the command succeeded, the twin has the report.
	api := loginURL(t, "http://"+srv.http, "admin", "change-me-please")
	checkFor(t, 10*time.Second, func() error {
		var cmds struct {
			Commands []struct{ Name, Status string } `json:"commands"`
		}
		api.do(t, "GET", "/devices/th-1/commands", nil, &cmds)
		if len(cmds.Commands) != 1 || cmds.Commands[0].Status != "succeeded" {
			return fmt.Errorf("commands of th-1: %+v", cmds.Commands)
		}
		var twin struct {
			Reported map[string]any `json:"reported"`
			Delta    map[string]any `json:"delta"`
		}
		api.do(t, "GET", "/devices/th-1/twin", nil, &twin)
		if twin.Reported["setpoint"] != float64(22) || twin.Delta["mode"] != "eco" {
			return fmt.Errorf("twin of th-1: %+v", twin)
		}
		return nil
	})
	if got := deviceIDs(t, api); len(got) != 1 || !got["th-1"] {
		t.Errorf("devices after the walkthrough (sim --cleanup): %v", got)
	}
}

// walkthroughServer is `tether serve` as a user starts it: no anonymous
// access, no TLS, on loopback ports.
type walkthroughServer struct {
	mqtt, http string
	logf       *os.File
}

func (s *walkthroughServer) log() string {
	b, _ := os.ReadFile(s.logf.Name())
	return string(b)
}

func startWalkthroughServer(t *testing.T, bin string, env ...string) *walkthroughServer {
	t.Helper()
	dir := t.TempDir()
	s := &walkthroughServer{mqtt: freeAddr(t), http: freeAddr(t)}
	f, err := os.Create(filepath.Join(dir, "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	s.logf = f
	cmd := exec.Command(bin, "serve", "--data-dir", filepath.Join(dir, "data"),
		"--mqtt-addr", s.mqtt, "--http-addr", s.http, "--tls-addr", "off", "--https-addr", "off")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		f.Close()
	})
	checkFor(t, 30*time.Second, func() error {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("tether exited during start-up: %v\n%s", err, s.log())
		default:
		}
		resp, err := http.Get("http://" + s.http + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	return s
}
