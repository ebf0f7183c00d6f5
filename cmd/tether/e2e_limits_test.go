package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/devices"
)

const limitsAdminPassword = "limits-admin-password-1"

// limitsProcess runs the binary with anonymous MQTT off and an admin, and
// returns it with an API session as the admin.
func limitsProcess(t *testing.T, env ...string) (*process, *apiSession) {
	t.Helper()
	return limitsProcessIn(t, t.TempDir(), env...)
}

// limitsProcessIn is limitsProcess on the data directory dir (which may
// hold an earlier run's data: the admin password is then the earlier
// one, the same).
func limitsProcessIn(t *testing.T, dir string, env ...string) (*process, *apiSession) {
	t.Helper()
	p := startProcessArgs(t, []string{"--data-dir", dir}, append([]string{"TETHER_ADMIN_PASSWORD=" + limitsAdminPassword, "TETHER_TELEMETRY_FLUSH_INTERVAL=50ms"}, env...)...)
	api := &apiSession{base: "http://" + p.http, client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(api.client.CloseIdleConnections)
	var tok struct{ Token string }
	if code := api.do(t, "POST", "/auth/login", map[string]string{"username": "admin", "password": limitsAdminPassword}, &tok); code != 200 {
		t.Fatalf("login: %d", code)
	}
	api.token = tok.Token
	return p, api
}

func (s *apiSession) register(t *testing.T, id string) string {
	t.Helper()
	var d struct{ Secret string }
	if code := s.do(t, "POST", "/devices", map[string]any{"id": id, "name": id, "type": "limits"}, &d); code/100 != 2 {
		t.Fatalf("register %s: %d", id, code)
	}
	return d.Secret
}

// TestDeviceMetricNameCap: a device sending new metric names in every
// message keeps 1,024 of them (SPEC §6) in last_values and its history;
// the others are counted as refused; its known metrics are still stored.
func TestDeviceMetricNameCap(t *testing.T) {
	p, api := limitsProcess(t)
	dev := paho3Device(t, p.mqtt, "greedy", api.register(t, "greedy"), true)
	defer dev.Disconnect(0)
	for i := range 6 { // 1,536 names
		var b []byte
		b = append(b, '{')
		for j := range 256 {
			if j > 0 {
				b = append(b, ',')
			}
			b = fmt.Appendf(b, `"m%d_%d":%d`, i, j, j)
		}
		b = append(b, '}')
		waitPaho(t, dev.Publish("devices/greedy/telemetry", 1, false, b))
	}
	waitPaho(t, dev.Publish("devices/greedy/telemetry", 1, false, `{"m0_0":4242,"brand_new":1}`))
	metrics := "http://" + p.http + "/metrics"
	checkFor(t, 10*time.Second, func() error {
		var d struct {
			LastValues map[string]float64 `json:"last_values"`
		}
		if code := api.do(t, "GET", "/devices/greedy", nil, &d); code != 200 {
			return fmt.Errorf("GET device: %d", code)
		}
		if len(d.LastValues) != 1024 || d.LastValues["m0_0"] != 4242 {
			return fmt.Errorf("last_values holds %d names, m0_0=%v", len(d.LastValues), d.LastValues["m0_0"])
		}
		return nil
	})
	if n := scrapeCounter(t, metrics, `tether_telemetry_metrics_refused_total{reason="device_metric_limit"}`); n != 512+1 {
		t.Fatalf("refused metrics counted %v, want 513", n)
	}
}

// TestDevicePublishRate: a device publishing faster than
// limits.device_publish_rate (100/s, bursts of 500) is slowed down, not
// cut off: every message is taken (its reported twin counts 700 patches),
// and the delays are counted for devices; an admin publishing as fast is
// not held.
func TestDevicePublishRate(t *testing.T) {
	p, api := limitsProcess(t)
	secret := api.register(t, "fast")
	const n = 700
	c, err := net.Dial("tcp", p.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(rawConnectAuth(4, "fast", "fast", secret))
	if first, body, err := readRawPacket(c); err != nil || first != 0x20 || body[1] != 0 {
		t.Fatalf("CONNACK %#x %v %v", first, body, err)
	}
	var burst []byte
	for i := range n {
		burst = append(burst, rawPublish(4, "devices/fast/twin/reported", fmt.Appendf(nil, `{"i":%d}`, i))...)
	}
	go c.Write(burst)
	checkFor(t, 30*time.Second, func() error {
		var tw struct {
			ReportedVersion int `json:"reported_version"`
		}
		if code := api.do(t, "GET", "/devices/fast/twin", nil, &tw); code != 200 {
			return fmt.Errorf("GET twin: %d", code)
		}
		if tw.ReportedVersion != n {
			return fmt.Errorf("%d of %d reported patches merged", tw.ReportedVersion, n)
		}
		return nil
	})
	metrics := "http://" + p.http + "/metrics"
	if d := scrapeCounter(t, metrics, `tether_publish_throttled_total{kind="device"}`); d == 0 {
		t.Fatal("a device 200 messages over its burst was never slowed down")
	}
	// An admin publishing as many is not held. Its last message is QoS 1:
	// once acknowledged, the ones before it have been handled.
	admin := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + p.mqtt).SetClientID("admin-pub").
		SetUsername("admin").SetPassword(limitsAdminPassword).SetCleanSession(true).SetAutoReconnect(false))
	waitPaho(t, admin.Connect())
	defer admin.Disconnect(0)
	for i := range n {
		admin.Publish("test/admin", 0, false, fmt.Sprint(i))
	}
	waitPaho(t, admin.Publish("test/admin", 1, false, "last"))
	if d := scrapeCounter(t, metrics, `tether_publish_throttled_total{kind="other"}`); d != 0 {
		t.Fatalf("an admin was slowed down %v times", d)
	}
}

// waitPaho waits for a paho token and fails the test on an error.
func waitPaho(t *testing.T, tok paho3.Token) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("paho: %v", tok.Error())
	}
}

// TestSIGTERMUnderFlood: with a device flooding 32 KB messages of new
// metric names (its publish rate unlimited, so that only the queues'
// bounds and the name cap hold it), SIGTERM still ends the process, exit
// 0, within mqtt.shutdown_grace.
func TestSIGTERMUnderFlood(t *testing.T) {
	const grace = 3 * time.Second
	p := startProcessAuth(t, "TETHER_ADMIN_PASSWORD="+limitsAdminPassword,
		"TETHER_MQTT_SHUTDOWN_GRACE="+grace.String(), "TETHER_LIMITS_DEVICE_PUBLISH_RATE=0")
	api := &apiSession{base: "http://" + p.http, client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(api.client.CloseIdleConnections)
	var tok struct{ Token string }
	if code := api.do(t, "POST", "/auth/login", map[string]string{"username": "admin", "password": limitsAdminPassword}, &tok); code != 200 {
		t.Fatalf("login: %d", code)
	}
	api.token = tok.Token
	secret := api.register(t, "flooder")
	c, err := net.Dial("tcp", p.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(rawConnectAuth(4, "flooder", "flooder", secret))
	if first, body, err := readRawPacket(c); err != nil || first != 0x20 || body[1] != 0 {
		t.Fatalf("CONNACK %#x %v %v", first, body, err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for seq := 0; ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(rawPublish(4, "devices/flooder/telemetry", floodPayload(seq))); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	metrics := "http://" + p.http + "/metrics"
	checkFor(t, 20*time.Second, func() error { // the flood has filled the names and reached the queue
		if n := scrapeCounter(t, metrics, `tether_telemetry_metrics_refused_total{reason="device_metric_limit"}`); n < 10*256 {
			return fmt.Errorf("%v metrics refused", n)
		}
		return nil
	})
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.logText())
		}
	case <-time.After(grace + 2*time.Second):
		t.Fatalf("still running %v after SIGTERM under a flood", time.Since(start))
	}
}

// TestTelemetryAnswerMemory: GET /devices/{id}/telemetry streams its
// points as the store decodes them, so a viewer asking for many large
// points does not make the server hold the answer several times over (as
// points, then as their encoding). The black-box run measured a 189 MB
// answer (3,000 points of 63 KB) raising the peak RSS by 768 MB before,
// by 210 MB after. (These 600 points are 36 MB: the answer stops at
// about 32 MiB and says it is truncated.) The fixture, 154,200 values of
// one device, is 2.6 minutes' worth of telemetry.device_values_rate at
// the defaults: it is written into the data directory by the history
// store itself while the server is stopped, and the server, at its
// defaults, answers the query.
func TestTelemetryAnswerMemory(t *testing.T) {
	dir := t.TempDir()
	p, api := limitsProcessIn(t, dir)
	api.register(t, "wordy")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-p.exited; err != nil {
		t.Fatalf("exit: %v\n%s", err, p.logText())
	}
	const n = 600
	start := time.Now().Add(-time.Hour).UnixMilli()
	seedTelemetry(t, dir, "wordy", func(i int) map[string]any {
		if i == n {
			return nil
		}
		m := map[string]any{"ts": start + int64(i), "i": i}
		for k := range 255 {
			m[fmt.Sprintf("m%03d_%s", k, strings.Repeat("n", 95))] = strings.Repeat("v", 130)
		}
		return m
	})
	// gctrace: each collection logs the heap it found live (see liveHeapMB).
	p, api = limitsProcessIn(t, dir, "GODEBUG=gctrace=1")
	checkFor(t, 30*time.Second, func() error {
		var r struct{ Buckets []devices.Bucket }
		if code := api.do(t, "GET", "/devices/wordy/telemetry?step=2h&from="+strconv.FormatInt(start-1, 10), nil, &r); code != 200 {
			return fmt.Errorf("GET buckets: %d", code)
		}
		var stored int64
		for _, b := range r.Buckets {
			stored += b.Count["i"]
		}
		if stored != n {
			return fmt.Errorf("%d of %d points stored", stored, n)
		}
		return nil
	})
	pid := p.cmd.Process.Pid
	before, ok := procStatusKiB(pid, "VmHWM")
	if !ok {
		t.Skip("no /proc/PID/status here")
	}
	baseLive, _ := liveHeapMB(p.logText())
	logAt := len(p.logText())
	req, _ := http.NewRequest("GET", api.base+"/api/v1/devices/wordy/telemetry?limit=10000&from="+strconv.FormatInt(start-1, 10), nil)
	req.Header.Set("Authorization", "Bearer "+api.token)
	res, err := api.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// Read as it comes, holding nothing but its end; count the points.
	var size int64
	points := 0
	carry, tail := []byte{}, []byte{}
	buf := make([]byte, 64<<10)
	for {
		k, err := res.Body.Read(buf)
		chunk := append(carry, buf[:k]...)
		points += bytes.Count(chunk, []byte(`{"ts":`))
		carry = append(carry[:0], chunk[max(0, len(chunk)-5):]...)
		tail = append(tail, buf[:k]...)
		tail = append(tail[:0], tail[max(0, len(tail)-200):]...)
		size += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	res.Body.Close()
	after, _ := procStatusKiB(pid, "VmHWM")
	grew := (after - before) * 1024
	if res.StatusCode != 200 || points < n*3/4 || points >= n || !bytes.Contains(tail, []byte(`],"truncated":true,"next_from":`)) {
		t.Fatalf("status %d, %d points, ending %q; want 200, the points of 32 MiB, truncated", res.StatusCode, points, tail)
	}
	// What the server held is the heap its collections found live while
	// it answered, over what was live before; the peak RSS is logged, not
	// judged. At GOGC 200 (tether serve's default) the heap may grow to
	// three times what is live before a collection, and on a loaded
	// machine the collector runs late: the peak RSS grew 1.4 times the
	// answer at load 2 and 3.0-3.6 times at load 7-12. Before the answer
	// was streamed, it was held as points and again as their encoding
	// (the peak RSS 4.3 times the answer). Before the store gave points
	// out a page at a time, every chunk up to the limit was decoded first:
	// the live heap grew 1.2-2.1 times the answer at load 10-22; 0.5 after.
	_, most := liveHeapMB(p.logText()[logAt:])
	held := int64(most-baseLive) << 20
	t.Logf("answer of %d bytes (%d points): the live heap grew by at most %d bytes (%.1f times); the peak RSS by %d bytes (%.1f times)",
		size, points, held, float64(held)/float64(size), grew, float64(grew)/float64(size))
	if held > 2*size {
		t.Errorf("the answer of %d bytes raised the server's live heap by %d bytes: more than twice the answer", size, held)
	}
}

// gcLive matches a gctrace line's heap sizes: before, after, and live
// after marking ("gc 7 @1.2s 3%: ... ms cpu, 12->14->6 MB, 24 MB goal").
var gcLive = regexp.MustCompile(`(?m)^gc \d+ @.*?, (\d+)->(\d+)->(\d+) MB`)

// liveHeapMB is the live heap, in MB, of the last and of the largest
// gctrace line in log (0 when there are none).
func liveHeapMB(log string) (last, most int) {
	for _, m := range gcLive.FindAllStringSubmatch(log, -1) {
		last, _ = strconv.Atoi(m[3])
		most = max(most, last)
	}
	return last, most
}

// TestDeviceValuesRate: at the defaults (telemetry.device_values_rate
// 1,000 values a second, bursts of 10,000) a device publishing 400
// payloads of 256 metrics within its publish rate (102,400 values: 25,600
// a second is what limits.device_publish_rate lets it send) has its
// burst and rate stored and no more; every message is routed to a
// subscriber as usual; the rest is counted as device_rate and logged,
// naming the device; another device publishing meanwhile loses nothing.
func TestDeviceValuesRate(t *testing.T) {
	p, api := limitsProcess(t)
	evil := paho3Device(t, p.mqtt, "evil", api.register(t, "evil"), true)
	defer evil.Disconnect(0)
	calm := paho3Device(t, p.mqtt, "calm", api.register(t, "calm"), true)
	defer calm.Disconnect(0)
	var routed atomic.Int64
	watch := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + p.mqtt).SetClientID("watch").
		SetUsername("admin").SetPassword(limitsAdminPassword).SetCleanSession(true).SetAutoReconnect(false))
	waitPaho(t, watch.Connect())
	defer watch.Disconnect(0)
	waitPaho(t, watch.Subscribe("devices/evil/telemetry", 1, func(paho3.Client, paho3.Message) { routed.Add(1) }))

	const n, metrics = 400, 256
	start := time.Now()
	for i := range n {
		b := []byte{'{'}
		for j := range metrics {
			if j > 0 {
				b = append(b, ',')
			}
			b = fmt.Appendf(b, `"m%d":%d.%d`, j, i, j)
		}
		waitPaho(t, evil.Publish("devices/evil/telemetry", 1, false, append(b, '}')))
		if i%20 == 0 {
			waitPaho(t, calm.Publish("devices/calm/telemetry", 1, false, fmt.Sprintf(`{"seq":%d}`, i)))
		}
	}
	elapsed := time.Since(start)
	metricsURL := "http://" + p.http + "/metrics"
	var stored, refused float64
	checkFor(t, 30*time.Second, func() error {
		stored = scrapeCounter(t, metricsURL, "tether_telemetry_points_stored_total")
		refused = scrapeCounter(t, metricsURL, `tether_telemetry_points_dropped_total{reason="device_rate"}`)
		if stored+refused != n+n/20 || routed.Load() != n {
			return fmt.Errorf("stored %v and refused %v of %d points, %d of %d routed", stored, refused, n+n/20, routed.Load(), n)
		}
		return nil
	})
	count := func(id string) int {
		var pts struct{ Points []json.RawMessage }
		if code := api.do(t, "GET", "/devices/"+id+"/telemetry?limit=10000&from="+start.Add(-time.Minute).UTC().Format(time.RFC3339), nil, &pts); code != 200 {
			t.Fatalf("GET telemetry of %s: %d", id, code)
		}
		return len(pts.Points)
	}
	if c := count("calm"); c != n/20 {
		t.Errorf("calm: %d points stored, want %d", c, n/20)
	}
	// The burst, then the rate for as long as the device published (and
	// a second more for the last hook after its PUBACK).
	most := (10000 + 1000*(elapsed+time.Second).Seconds()) / metrics
	if got := count("evil"); got < 10000/metrics || float64(got) > most || float64(got) != stored-n/20 {
		t.Errorf("evil: %d points stored in %s, want %d to %.0f (counted %v)", got, elapsed, 10000/metrics, most, stored-n/20)
	}
	if refused == 0 {
		t.Fatalf("nothing refused: the publisher took %s", elapsed)
	}
	checkFor(t, 10*time.Second, func() error {
		for _, l := range strings.Split(p.logText(), "\n") {
			if strings.Contains(l, "telemetry.device_values_rate") && strings.Contains(l, `"device":"evil"`) {
				return nil
			}
		}
		return fmt.Errorf("no log line of the device over the rate")
	})
}

// seedTelemetry stores the samples next gives (i from 0, until it returns
// nil) as device's history in data directory dir, through the history
// store (parsed as the broker parses a payload), while no server runs on
// it: a fixture larger than a device may store through MQTT at once.
func seedTelemetry(t *testing.T, dir, device string, next func(i int) map[string]any) {
	t.Helper()
	db, err := devices.OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tel, err := devices.OpenTelemetry(context.Background(), db, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		m := next(i)
		if m == nil {
			break
		}
		b, _ := json.Marshal(m)
		s, err := devices.ParseTelemetry(b)
		if err != nil {
			t.Fatal(err)
		}
		if !tel.Add(device, s, time.Now()) {
			t.Fatalf("sample %d not queued", i)
		}
		if i%100 == 99 {
			if err := tel.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tel.Close(); err != nil {
		t.Fatal(err)
	}
}
