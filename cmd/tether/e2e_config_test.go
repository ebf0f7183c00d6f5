package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
)

// TestLoadConfigLayers: defaults, then the file, then TETHER_* variables,
// then flags.
func TestLoadConfigLayers(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tether.yaml")
	if err := os.WriteFile(file, []byte(`
data_dir: /from/file
log:
  level: debug
mqtt:
  addr: 127.0.0.1:1001
  shutdown_grace: 7s
http:
  addr: 127.0.0.1:1002
auth:
  allow_anonymous: true
`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(c configs.Config) bool
	}{
		{"defaults", nil, nil, func(c configs.Config) bool {
			return c.MQTT.Addr == ":1883" && c.HTTP.Addr == ":8080" && !c.Auth.AllowAnonymous
		}},
		{"file over defaults", []string{"-c", file}, nil, func(c configs.Config) bool {
			return c.DataDir == "/from/file" && c.MQTT.Addr == "127.0.0.1:1001" && c.MQTT.ShutdownGrace == 7*time.Second &&
				c.Log.Level == "debug" && c.Auth.AllowAnonymous && c.MQTT.TLSAddr == ":8883"
		}},
		{"env over file", []string{"-c", file}, map[string]string{"TETHER_HTTP_ADDR": "127.0.0.1:2002", "TETHER_LOG_LEVEL": "warn", "TETHER_ALLOW_ANONYMOUS": "false"},
			func(c configs.Config) bool {
				return c.HTTP.Addr == "127.0.0.1:2002" && c.Log.Level == "warn" && !c.Auth.AllowAnonymous && c.MQTT.Addr == "127.0.0.1:1001"
			}},
		{"flags over env", []string{"-c", file, "--log-level", "error", "--http-addr", "off", "--allow-anonymous=false"},
			map[string]string{"TETHER_HTTP_ADDR": "127.0.0.1:2002", "TETHER_LOG_LEVEL": "warn", "TETHER_ALLOW_ANONYMOUS": "true"},
			func(c configs.Config) bool {
				return c.HTTP.Addr == "off" && c.Log.Level == "error" && !c.Auth.AllowAnonymous
			}},
		{"every serve flag", []string{"--data-dir", "d", "--mqtt-addr", ":1", "--http-addr", ":2", "--tls-addr", ":3", "--https-addr", ":4",
			"--tls-cert", "c.pem", "--tls-key", "k.pem", "--log-level", "debug", "--log-format", "json", "--allow-anonymous"}, nil,
			func(c configs.Config) bool {
				return c.DataDir == "d" && c.MQTT.Addr == ":1" && c.HTTP.Addr == ":2" && c.MQTT.TLSAddr == ":3" && c.HTTP.HTTPSAddr == ":4" &&
					c.TLS.Cert == "c.pem" && c.TLS.Key == "k.pem" && c.Log.Level == "debug" && c.Log.Format == "json" && c.Auth.AllowAnonymous
			}},
		{"env names from SPEC", nil, map[string]string{"TETHER_DATA_DIR": "dd", "TETHER_MQTT_ADDR": "off", "TETHER_ALLOW_ANONYMOUS": "true"},
			func(c configs.Config) bool { return c.DataDir == "dd" && c.MQTT.Addr == "off" && c.Auth.AllowAnonymous }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			c, err := loadConfig(tt.args, io.Discard, lookup)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("unexpected configuration %+v", c)
			}
		})
	}
}

// TestStartupRefusesBadValues: a bad value names its key and stops
// start-up with a non-zero exit; nothing is left listening.
func TestStartupRefusesBadValues(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badYAML := write("bad.yaml", "mqtt:\n  max_packet_size: 10\n  connect_timeout: soon\n")
	unknownKey := write("unknown.yaml", "mqtt:\n  max_packet: 10\n")
	badRules := write("rules.yaml", "auth:\n  rules:\n    - {effect: deny, access: subscribe, topic: \"test/x\"}\n    - {effect: allow, access: publish, topic: \"a/#/b\", who: \"role:boss\"}\n"+
		"telemetry:\n  topics:\n    - {filter: \"tele/+/SENSOR\", device_from: 2}\n")
	notPEM := write("key.pem", "not a key")
	certPEM, _, err := devCertificate(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := write("cert.pem", string(certPEM))
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	mqttAddr := free()

	base := []string{"serve", "--data-dir", filepath.Join(dir, "data"), "--mqtt-addr", mqttAddr, "--http-addr", "127.0.0.1:0", "--tls-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0"}
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		code     int
		stderrIn []string
	}{
		{"file: bad type", []string{"-c", badYAML}, nil, 1, []string{"mqtt.connect_timeout (line 3)"}},
		{"file: unknown key", []string{"-c", unknownKey}, nil, 1, []string{"mqtt.max_packet (line 2): unknown key"}},
		{"file: bad rules", []string{"-c", badRules}, nil, 1, []string{"auth.rules[1].topic", "auth.rules[1].who", "telemetry.topics[0].device_from"}},
		{"env: bad rules", nil, map[string]string{"TETHER_AUTH_RULES": `[{"effect":"allow","access":"read","topic":"x"}]`}, 1, []string{"auth.rules[0].access"}},
		{"file: missing", []string{"-c", filepath.Join(dir, "nope.yaml")}, nil, 1, []string{"nope.yaml"}},
		{"env: bad bool", nil, map[string]string{"TETHER_ALLOW_ANONYMOUS": "maybe"}, 1, []string{"TETHER_ALLOW_ANONYMOUS (auth.allow_anonymous)"}},
		{"env: bad duration", nil, map[string]string{"TETHER_MQTT_SHUTDOWN_GRACE": "10"}, 1, []string{"TETHER_MQTT_SHUTDOWN_GRACE (mqtt.shutdown_grace)"}},
		{"flag: bad address", []string{"--mqtt-addr", "1883"}, nil, 1, []string{"mqtt.addr"}},
		{"flag: bad log format", []string{"--log-format", "xml"}, nil, 1, []string{"log.format"}},
		{"flag: unknown", []string{"--mqtt-adr", ":1"}, nil, 2, []string{"flag provided but not defined"}},
		{"several bad values at once", []string{"--log-level", "loud", "--log-format", "xml"}, nil, 1, []string{"log.level", "log.format"}},
		{"cert without key", []string{"--tls-cert", cert}, nil, 1, []string{"tls: cert and key must be given together"}},
		{"key that does not load", []string{"--tls-cert", cert, "--tls-key", notPEM}, nil, 1, []string{"tls: load certificate", notPEM}},
		{"port in use", []string{"--http-addr", busy.Addr().String()}, nil, 1, []string{busy.Addr().String(), "address already in use"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			args := append(append([]string{}, base...), tt.args...)
			if code := run(ctx, args, &stdout, &stderr); code != tt.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr.String())
			}
			for _, s := range tt.stderrIn {
				if !strings.Contains(stderr.String(), s) {
					t.Fatalf("stderr does not say %q:\n%s", s, stderr.String())
				}
			}
			// Nothing was left bound.
			l, err := net.Listen("tcp", mqttAddr)
			if err != nil {
				t.Fatalf("MQTT address still in use after a failed start: %v", err)
			}
			l.Close()
		})
	}
}

// TestCommands: version, help and certs dev work.
func TestCommands(t *testing.T) {
	ctx := context.Background()
	var out, errOut bytes.Buffer
	if code := run(ctx, []string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "tether ") {
		t.Fatalf("version: exit %d, %q %q", code, out.String(), errOut.String())
	}
	for _, args := range [][]string{{"--help"}, {"help"}, {"serve", "--help"}, {"certs", "--help"}, {"version", "--help"}} {
		out.Reset()
		errOut.Reset()
		if code := run(ctx, args, &out, &errOut); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut.String())
		}
		if out.Len()+errOut.Len() == 0 {
			t.Fatalf("%v printed no help", args)
		}
	}
	out.Reset()
	if code := run(ctx, []string{"serve", "--help"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "-allow-anonymous") {
		t.Fatalf("serve --help does not list --allow-anonymous: %s", out.String())
	}

	dir := filepath.Join(t.TempDir(), "certs")
	if code := run(ctx, []string{"certs", "dev", "--out", dir}, &out, &errOut); code != 0 {
		t.Fatalf("certs dev: exit %d: %s", code, errOut.String())
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("certificate does not verify for %s: %v", host, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode %v, %v; want 0600", fi.Mode(), err)
	}
	if code := run(ctx, []string{"certs", "dev", "--out", dir}, &out, &errOut); code == 0 {
		t.Fatal("certs dev overwrote existing files without --force")
	}
}

// TestServeRefusesNewerDatabase: on a database a newer release has
// migrated (an older binary after a downgrade), serve stops with the
// migration's own reason and exit code 1, for each store it opens after
// the registry, and leaves nothing bound. Before, a refusal of the
// telemetry, commands, twins or audit store panicked (the clean-up of the
// half-opened stores ran on a nil pointer).
func TestServeRefusesNewerDatabase(t *testing.T) {
	for _, component := range []string{"registry", "telemetry", "commands", "twins", "audit", "sessions"} {
		t.Run(component, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "tether.db")
			if component == "sessions" { // a file of its own
				file = filepath.Join(dir, "sessions.db")
			}
			db, err := devices.OpenDBFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.W.Exec(`INSERT INTO schema_migrations(component, version) VALUES (?, 999)`, component); err != nil {
				t.Fatal(err)
			}
			db.Close()
			mqttAddr := freeAddr(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			code := run(ctx, []string{"serve", "--data-dir", dir, "--mqtt-addr", mqttAddr, "--http-addr", "127.0.0.1:0",
				"--tls-addr", "off", "--https-addr", "off"}, &stdout, &stderr)
			if code != 1 {
				t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr.String())
			}
			if want := "migrate " + component + ": database is at version 999"; !strings.Contains(stderr.String(), want) {
				t.Fatalf("stderr does not say %q:\n%s", want, stderr.String())
			}
			l, err := net.Listen("tcp", mqttAddr)
			if err != nil {
				t.Fatalf("MQTT address still in use after a refused start: %v", err)
			}
			l.Close()
		})
	}
}
