package broker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/devices"
)

// TestAuthThousandDevicesAtOnce registers 1,000 devices in one bulk call,
// then connects them all at once with paho: every one must get in.
func TestAuthThousandDevicesAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	e := startAuthEnv(t, false)
	const n = 1000
	nds := make([]devices.NewDevice, n)
	for i := range nds {
		nds[i] = devices.NewDevice{ID: fmt.Sprintf("bulk-%04d", i), Type: "sensor"}
	}
	creds, err := e.reg.CreateDevices(context.Background(), nds)
	if err != nil {
		t.Fatal(err)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	clients := make(chan paho.Client, n)
	for _, c := range creds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			o := paho.NewClientOptions().AddBroker("tcp://" + e.tcp).SetClientID(c.ID).
				SetUsername(c.ID).SetPassword(c.Secret).SetProtocolVersion(4).
				SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(60 * time.Second).
				SetKeepAlive(5 * time.Minute)
			cl := paho.NewClient(o)
			tok := cl.Connect()
			if !tok.WaitTimeout(90*time.Second) || tok.Error() != nil {
				errs <- fmt.Errorf("%s: %v", c.ID, tok.Error())
				return
			}
			clients <- cl
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	took := time.Since(t0)
	close(errs)
	close(clients)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d devices connected in %v", len(clients), took)
	// The registry sees them all online (presence is written in batches).
	checkFor(t, 30*time.Second, func() error {
		devs, _, err := e.reg.ListDevices(context.Background(), devices.DeviceFilter{Status: "online", Limit: devices.MaxPage})
		if err != nil {
			return err
		}
		if len(devs) != n {
			return fmt.Errorf("%d online in the registry", len(devs))
		}
		return nil
	})
	for cl := range clients {
		cl.Disconnect(0)
	}
}

// scaleResult is what the connecting process reports.
type scaleResult struct {
	Devices    int     `json:"devices"`
	OK         int     `json:"ok"`
	Failed     int     `json:"failed"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"connects_per_second"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	Maxms      float64 `json:"max_ms"`
	FirstError string  `json:"first_error,omitempty"`
}

// TestAuthScaleConnect measures connects per second and connect latency
// for 10,000 registered devices connecting at once with authentication
// (TETHER_SCALE=1; TETHER_SCALE_DEVICES changes the count). The devices
// connect from a child process, so that both ends' sockets fit the file
// limit. TETHER_SCALE_BASELINE=1 runs the same without the access hook
// (everyone let in), for comparison.
//
//	TETHER_SCALE=1 go test -run TestAuthScaleConnect -v ./broker/
func TestAuthScaleConnect(t *testing.T) {
	if os.Getenv("TETHER_SCALE_CLIENT") != "" {
		scaleClient(t)
		return
	}
	if os.Getenv("TETHER_SCALE") == "" {
		t.Skip("set TETHER_SCALE=1")
	}
	n := 10000
	fmt.Sscan(os.Getenv("TETHER_SCALE_DEVICES"), &n)
	baseline := os.Getenv("TETHER_SCALE_BASELINE") != ""
	e := startAuthEnvOpts(t, false, baseline)
	nds := make([]devices.NewDevice, n)
	for i := range nds {
		nds[i] = devices.NewDevice{ID: fmt.Sprintf("scale-%05d", i)}
	}
	t0 := time.Now()
	creds, err := e.reg.CreateDevices(context.Background(), nds)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("registered %d devices in one call: %v", n, time.Since(t0))
	file := t.TempDir() + "/creds"
	var sb strings.Builder
	for _, c := range creds {
		fmt.Fprintf(&sb, "%s %s\n", c.ID, c.Secret)
	}
	if err := os.WriteFile(file, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAuthScaleConnect$", "-test.v")
	cmd.Env = append(os.Environ(), "TETHER_SCALE_CLIENT="+e.tcp+" "+file)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client process: %v\n%s", err, out)
	}
	var res scaleResult
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "{") {
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, _ := json.Marshal(res)
	t.Logf("result: %s", b)
	if res.OK != n {
		t.Errorf("%d of %d connected", res.OK, n)
	}
	if baseline {
		return
	}
	// Every connect and disconnect reached the registry.
	t1 := time.Now()
	checkFor(t, 60*time.Second, func() error {
		devs, _, err := e.reg.ListDevices(context.Background(), devices.DeviceFilter{Status: "online", Limit: 1})
		if err != nil {
			return err
		}
		if len(devs) > 0 {
			return fmt.Errorf("devices still online in the registry")
		}
		return nil
	})
	written, dropped := e.reg.PresenceStats()
	t.Logf("registry presence settled %v after the client exited: %d records written, %d dropped", time.Since(t1), written, dropped)
	if dropped != 0 {
		t.Errorf("%d presence records dropped", dropped)
	}
}

// scaleClient is the child process: it dials every device at once, sends
// CONNECT, times each CONNACK, holds all connections until the last is
// done, and prints a scaleResult line.
func scaleClient(t *testing.T) {
	addr, file, _ := strings.Cut(os.Getenv("TETHER_SCALE_CLIENT"), " ")
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	var ids, secrets []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, secret, _ := strings.Cut(sc.Text(), " ")
		ids, secrets = append(ids, id), append(secrets, secret)
	}
	f.Close()
	n := len(ids)
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	conns := make([]net.Conn, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			c, err := net.DialTimeout("tcp", addr, 60*time.Second)
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			code, err := authRawHandshake(c, 4, ids[i], ids[i], secrets[i])
			lat[i] = time.Since(t0)
			if err == nil && code != 0 {
				err = fmt.Errorf("CONNACK %#x", code)
			}
			errs[i] = err
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	total := time.Since(t0)
	res := scaleResult{Devices: n, Seconds: total.Seconds()}
	var ok []time.Duration
	for i := range n {
		if errs[i] != nil {
			res.Failed++
			if res.FirstError == "" {
				res.FirstError = errs[i].Error()
			}
			continue
		}
		ok = append(ok, lat[i])
	}
	res.OK = len(ok)
	if len(ok) > 0 {
		slices.Sort(ok)
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		res.P50ms = ms(ok[len(ok)/2])
		res.P99ms = ms(ok[(len(ok)*99)/100])
		res.Maxms = ms(ok[len(ok)-1])
		res.PerSecond = float64(len(ok)) / total.Seconds()
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	b, _ := json.Marshal(res)
	fmt.Printf("\n%s\n", b)
}
