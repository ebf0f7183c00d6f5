package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// The monitoring files shipped in deploy/.
const (
	alertRulesFile = "../../deploy/prometheus/alerts.yml"
	grafanaFile    = "../../deploy/grafana/tether-dashboard.json"
)

// tetherMetric is a metric name of Tether's in a PromQL expression.
var tetherMetric = regexp.MustCompile(`\btether_[a-z0-9_]+\b`)

// exposedMetrics returns the metric names a running app's /metrics shows
// after one HTTP request and one MQTT message (so that series that appear
// with the first event exist).
func exposedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	cfg := testConfig(t)
	// A cluster of one: its tether_cluster_* series too (every series
	// then carries node="metrics").
	cfg.Cluster.Node, cfg.Cluster.Listen = "metrics", "127.0.0.1:0"
	a := startTestApp(t, cfg)
	c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).SetClientID("metrics-probe").
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	if tok := c.Publish("probe", 1, false, "x"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	c.Disconnect(0)
	if resp, err := http.Get("http://" + a.httpAddr() + "/healthz"); err == nil {
		resp.Body.Close()
	}
	resp, err := http.Get("http://" + a.httpAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
		// Requests are counted by route pattern, not raw path.
		if strings.HasPrefix(line, "tether_http_requests_total{") && strings.Contains(line, `route="GET /healthz"`) {
			names["route GET /healthz"] = true
		}
		if strings.HasPrefix(line, "tether_build_info{") && strings.Contains(line, `version="`) && strings.HasSuffix(line, " 1") {
			names["build info 1"] = true
		}
	}
	return names
}

// TestMonitoringFiles: the alert rules pass `promtool check rules`, the
// Grafana dashboard is valid JSON whose queries pass it too, and both
// name only metrics that /metrics really exposes.
func TestMonitoringFiles(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	requireTool(t, "promtool (Debian package prometheus)", err)
	if out, err := exec.Command(promtool, "check", "rules", alertRulesFile).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", alertRulesFile, err, out)
	}

	raw, err := os.ReadFile(grafanaFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", grafanaFile, err)
	}
	if dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("%s: no uid, title or panels", grafanaFile)
	}
	// The dashboard's queries, with Grafana's variables filled in, as
	// recording rules: promtool parses each one.
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: grafana\n    rules:\n")
	exprs := map[string]string{} // expr → panel
	for i, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for j, tg := range p.Targets {
			e := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*").Replace(tg.Expr)
			exprs[e] = p.Title
			b, _ := json.Marshal(e) // a JSON string is a YAML string
			fmt.Fprintf(&rules, "      - record: grafana:panel%d:query%d\n        expr: %s\n", i, j, b)
		}
	}
	tmp := filepath.Join(t.TempDir(), "grafana-queries.yml")
	if err := os.WriteFile(tmp, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", tmp).CombinedOutput(); err != nil {
		t.Fatalf("the dashboard's queries do not parse: %v\n%s", err, out)
	}

	alerts, err := os.ReadFile(alertRulesFile)
	if err != nil {
		t.Fatal(err)
	}
	exposed := exposedMetrics(t)
	var missing []string
	check := func(where, expr string) {
		for _, name := range tetherMetric.FindAllString(expr, -1) {
			if !exposed[name] {
				missing = append(missing, fmt.Sprintf("%s (%s)", name, where))
			}
		}
	}
	for e, panel := range exprs {
		if len(tetherMetric.FindAllString(e, -1)) == 0 {
			t.Errorf("panel %q: query %q names no tether_ metric", panel, e)
		}
		check("panel "+panel, e)
	}
	check(alertRulesFile, string(alerts))
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics that /metrics does not expose: %s", strings.Join(missing, ", "))
	}
	for _, want := range []string{"tether_build_info", "tether_devices_registered", "tether_devices_online",
		"tether_http_requests_total", "tether_http_request_duration_seconds_bucket", "route GET /healthz", "build info 1"} {
		if !exposed[want] {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
