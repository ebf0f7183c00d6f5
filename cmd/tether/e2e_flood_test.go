package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// TestMeasureFlood is issue 10's item 4 as a measurement: one device
// sends 32 KB telemetry messages with 256 new metric names each, as fast
// as its socket takes them, while another device publishes a sample every
// 200 ms and a durable (persistent-session) device publishes QoS 1
// messages one at a time. It reports the server's peak RSS, how long the
// calm device's samples took to show in GET /devices/{id}/telemetry, the
// durable publisher's PUBACK p99, and how long the server took to exit
// after SIGTERM sent while the flood still runs. A measurement, not a
// test with a threshold:
//
//	TETHER_MEASURE=1 go test -run TestMeasureFlood -v -timeout 5m ./cmd/tether
//
// TETHER_MEASURE_FLOOD sets the flood's length (default 15s);
// TETHER_MEASURE_KNOWN_NAMES=1 sends the same 256 names every time;
// extra TETHER_* settings pass through to the server (e.g.
// TETHER_LIMITS_DEVICE_PUBLISH_RATE=0).
func TestMeasureFlood(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("a measurement: set TETHER_MEASURE=1 to run it")
	}
	flood := 15 * time.Second
	if s := os.Getenv("TETHER_MEASURE_FLOOD"); s != "" {
		var err error
		if flood, err = time.ParseDuration(s); err != nil {
			t.Fatalf("TETHER_MEASURE_FLOOD: %v", err)
		}
	}
	const adminPass = "flood-admin-password-1"
	p := startProcessAuth(t, "TETHER_ADMIN_PASSWORD="+adminPass)
	pid := p.cmd.Process.Pid
	api := &apiSession{base: "http://" + p.http, client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(api.client.CloseIdleConnections)
	var tok struct{ Token string }
	if code := api.do(t, "POST", "/auth/login", map[string]string{"username": "admin", "password": adminPass}, &tok); code != 200 {
		t.Fatalf("login: %d", code)
	}
	api.token = tok.Token
	secret := func(id string) string {
		var d struct{ Secret string }
		if code := api.do(t, "POST", "/devices", map[string]any{"id": id, "name": id, "type": "flood"}, &d); code != 201 && code != 200 {
			t.Fatalf("register %s: %d", id, code)
		}
		return d.Secret
	}
	floodSecret, calmSecret, qosSecret := secret("flooder"), secret("calm"), secret("durable")

	// RSS sampler.
	var peak atomic.Int64
	stopRSS := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if kib, ok := rssOf(pid); ok && kib > peak.Load() {
				peak.Store(kib)
			}
			select {
			case <-stopRSS:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	before, _ := rssOf(pid)

	// The flooder: a raw 3.1.1 connection writing QoS 0 PUBLISHes.
	fc, err := net.Dial("tcp", p.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	fc.Write(rawConnectAuth(4, "flooder", "flooder", floodSecret))
	if first, body, err := readRawPacket(fc); err != nil || first != 0x20 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("flooder CONNACK %#x %v %v", first, body, err)
	}
	go io.Copy(io.Discard, fc)
	var sent atomic.Int64
	stopFlood := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := 0; os.Getenv("TETHER_MEASURE_NOFLOOD") == ""; seq++ {
			select {
			case <-stopFlood:
				return
			default:
			}
			fc.SetWriteDeadline(time.Now().Add(time.Second))
			names := seq
			if os.Getenv("TETHER_MEASURE_KNOWN_NAMES") != "" {
				names = 0 // the same 256 names every time: only the queue's bounds hold it
			}
			if _, err := fc.Write(rawPublish(4, "devices/flooder/telemetry", floodPayload(names))); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				return
			}
			sent.Add(1)
		}
	}()

	// The calm device: a sample every 200 ms, each with its own value.
	calm := paho3Device(t, p.mqtt, "calm", calmSecret, true)
	type sample struct {
		at, seen time.Time
	}
	var smu sync.Mutex
	samples := map[int]*sample{}
	stopCalm := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stopCalm:
				return
			case <-time.After(200 * time.Millisecond):
			}
			smu.Lock()
			samples[i] = &sample{at: time.Now()}
			smu.Unlock()
			calm.Publish("devices/calm/telemetry", 0, false, fmt.Sprintf(`{"seq":%d}`, i))
		}
	}()
	go func() { // polls the history for the samples
		defer wg.Done()
		cl := &http.Client{Timeout: 5 * time.Second}
		for {
			select {
			case <-stopCalm:
				return
			case <-time.After(100 * time.Millisecond):
			}
			req, _ := http.NewRequest("GET", api.base+"/api/v1/devices/calm/telemetry?limit=10000", nil)
			req.Header.Set("Authorization", "Bearer "+api.token)
			resp, err := cl.Do(req)
			if err != nil {
				continue
			}
			var out struct {
				Points []struct{ Values map[string]float64 }
			}
			json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			now := time.Now()
			smu.Lock()
			for _, pt := range out.Points {
				if s := samples[int(pt.Values["seq"])]; s != nil && s.seen.IsZero() {
					s.seen = now
				}
			}
			smu.Unlock()
		}
	}()

	// The durable publisher: QoS 1, one at a time, persistent session.
	durable := paho3Device(t, p.mqtt, "durable", qosSecret, false)
	var lmu sync.Mutex
	var lat []time.Duration
	var refused int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stopCalm:
				return
			case <-time.After(20 * time.Millisecond):
			}
			start := time.Now()
			tk := durable.Publish("devices/durable/telemetry", 1, false, fmt.Sprintf(`{"n":%d}`, i))
			ok := tk.WaitTimeout(30*time.Second) && tk.Error() == nil
			lmu.Lock()
			if ok {
				lat = append(lat, time.Since(start))
			} else {
				refused++
			}
			lmu.Unlock()
		}
	}()

	time.Sleep(flood)
	// SIGTERM while the flood runs; the other two stop publishing.
	close(stopCalm)
	term := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	exit := "timeout>60s"
	select {
	case err := <-p.exited:
		exit = time.Since(term).Round(time.Millisecond).String()
		if err != nil {
			t.Logf("exit: %v", err)
		}
	case <-time.After(60 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
	close(stopFlood)
	close(stopRSS)
	fc.Close()
	calm.Disconnect(0)
	durable.Disconnect(0)
	wg.Wait()

	smu.Lock()
	var delays []time.Duration
	unseen := 0
	for _, s := range samples {
		if s.seen.IsZero() {
			unseen++
			delays = append(delays, term.Sub(s.at))
			continue
		}
		delays = append(delays, s.seen.Sub(s.at))
	}
	smu.Unlock()
	slices.Sort(delays)
	slices.Sort(lat)
	q := func(d []time.Duration, f float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		return d[min(len(d)-1, int(float64(len(d))*f))]
	}
	t.Logf("MEASURE flood=%v flood_msgs_sent=%d rss_before_mib=%d rss_peak_mib=%d "+
		"calm_samples=%d calm_unseen_at_sigterm=%d calm_delay_p50=%v calm_delay_max=%v "+
		"durable_acked=%d durable_failed=%d durable_p50=%v durable_p99=%v sigterm_exit=%s",
		flood, sent.Load(), before/1024, peak.Load()/1024,
		len(delays), unseen, q(delays, 0.5).Round(time.Millisecond), q(delays, 1).Round(time.Millisecond),
		len(lat), refused, q(lat, 0.5).Round(time.Millisecond), q(lat, 0.99).Round(time.Millisecond),
		exit)
	if os.Getenv("TETHER_MEASURE_LOG") != "" {
		t.Log(p.logText())
	}
}

// floodPayload is a ~32 KB JSON object of 256 metrics whose names are new
// in every message.
func floodPayload(seq int) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	pad := bytes.Repeat([]byte("x"), 100)
	for i := range 256 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"m%d_%d_%s":%d`, seq, i, pad, i)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// rawConnectAuth is a CONNECT with a user name and password; clean
// session, keep-alive 0.
func rawConnectAuth(version byte, id, user, pass string) []byte {
	var b bytes.Buffer
	mqttString(&b, "MQTT")
	b.WriteByte(version)
	b.WriteByte(0x02 | 0x80 | 0x40)
	b.Write([]byte{0, 0})
	if version == 5 {
		b.WriteByte(0)
	}
	mqttString(&b, id)
	mqttString(&b, user)
	mqttString(&b, pass)
	return rawPacket(0x10, b.Bytes())
}

// paho3Device connects a 3.1.1 device client.
func paho3Device(t *testing.T, addr, id, secret string, clean bool) paho3.Client {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetUsername(id).SetPassword(secret).
		SetProtocolVersion(4).SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetKeepAlive(60 * time.Second).SetWriteTimeout(30 * time.Second)
	c := paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	return c
}

// rssOf reads VmRSS of pid in KiB.
func rssOf(pid int) (int64, bool) { return procStatusKiB(pid, "VmRSS") }

// procStatusKiB reads a field in KiB (VmRSS, VmHWM) of pid's
// /proc/PID/status.
func procStatusKiB(pid int, field string) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, l := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(l, []byte(field+":")); ok {
			f := bytes.Fields(v)
			if len(f) > 0 {
				n, err := strconv.ParseInt(string(f[0]), 10, 64)
				return n, err == nil
			}
		}
	}
	return 0, false
}
