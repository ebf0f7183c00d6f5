package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/broker/rules"
	"github.com/tether-iot/tether/devices"
)

// benchRules are 100 auth rules of every kind, none of which covers the
// pairs' topics, so that every check walks all the rules that can match
// before the grants decide: the costly case.
func benchRules() []rules.Rule {
	var rs []rules.Rule
	for i := range 40 {
		rs = append(rs, rules.Rule{Effect: "allow", Access: "publish", Topic: fmt.Sprintf("fw/%%c/%d/#", i), Who: fmt.Sprintf("device:dev-%05d", i)})
	}
	for i := range 20 {
		rs = append(rs, rules.Rule{Effect: "allow", Access: "all", Topic: fmt.Sprintf("t%d/%%c/#", i), Who: "type:sensor"})
		rs = append(rs, rules.Rule{Effect: "deny", Access: "subscribe", Topic: fmt.Sprintf("test/%d/#", i)})
	}
	for i := range 10 {
		rs = append(rs, rules.Rule{Effect: "deny", Access: "all", Topic: fmt.Sprintf("+/x%d/#", i)})
		rs = append(rs, rules.Rule{Effect: "allow", Access: "subscribe", Topic: fmt.Sprintf("ops/%d/#", i), Who: "role:operator"})
	}
	return rs
}

// benchRegistry registers n devices of type sensor, each with grants.
func benchRegistry(b *testing.B, reg *devices.Registry, n int) {
	grants := []devices.TopicGrant{{Filter: "pair/%c/#", Access: "publish"}, {Filter: "pair/+/#", Access: "subscribe"},
		{Filter: "tele/%c/#", Access: "publish"}, {Filter: "cmnd/%c/#", Access: "subscribe"}}
	for start := 0; start < n; start += devices.MaxBulk {
		var nds []devices.NewDevice
		for i := start; i < min(n, start+devices.MaxBulk); i++ {
			nds = append(nds, devices.NewDevice{ID: fmt.Sprintf("dev-%05d", i), Type: "sensor", Topics: grants})
		}
		if _, err := reg.CreateDevices(context.Background(), nds); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkACLCheck is the cost of one publish check and one delivery
// check of a device with grants, without rules and with benchRules.
func BenchmarkACLCheck(b *testing.B) {
	for _, n := range []int{0, 100} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			e := startAuthEnv(b, false)
			benchRegistry(b, e.reg, 100)
			if n > 0 {
				e.auth.SetRules(mustRules(b, benchRules()...))
			}
			c := e.auth.newConn(devices.Identity{Kind: devices.KindDevice, Name: "dev-00050"}, false, "dev-00050")
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if !c.allows("pair/dev-00050/m", true) || !c.allows("pair/dev-00007/m", false) {
					b.Fatal("refused")
				}
			}
		})
	}
}

// BenchmarkPairsQoS1Rules: 8 pairs of devices over TCP (of 10,000
// registered devices, each with grants), each publisher sending QoS 1 on
// its own topic to its subscriber with 64 messages in flight, without
// auth rules and with 100. b.N is the number of messages.
//
//	go test -run XXX -bench PairsQoS1Rules -benchtime 200000x -count 5 ./broker/
func BenchmarkPairsQoS1Rules(b *testing.B) {
	for _, n := range []int{0, 100} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			benchPairs(b, n)
		})
	}
}

// benchAuthBroker is the access hook on a fresh registry with the
// backpressure hook, as tether serve has it (without it, a subscriber that
// falls behind loses QoS 1 messages at its send queue).
func benchAuthBroker(b *testing.B) *authEnv {
	ctx := context.Background()
	db, err := devices.OpenDB(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	reg, err := devices.OpenRegistry(ctx, db, authLogger())
	if err != nil {
		b.Fatal(err)
	}
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	auth := NewAuth(AuthOptions{Registry: reg, Logger: authLogger()})
	bp := NewBackpressure(time.Second) // mqtt.backpressure_wait's default
	o.Logger, o.Access, o.Hooks = authLogger(), auth, []mqtt.Hook{bp}
	br, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	bp.Attach(br.Server)
	if err := br.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = br.Shutdown(sctx)
		reg.Close()
		db.Close()
	})
	return &authEnv{b: br, auth: auth, reg: reg, tcp: br.TCP.Address()}
}

func benchPairs(b *testing.B, rules int) {
	const pairs, window, registered = 8, 64, 10000
	e := benchAuthBroker(b)
	benchRegistry(b, e.reg, registered)
	if rules > 0 {
		e.auth.SetRules(mustRules(b, benchRules()...))
	}
	secret := func(id string) string {
		_, s, err := e.reg.RotateSecret(context.Background(), id)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	var received atomic.Int64
	done := make(chan struct{})
	per := (b.N + pairs - 1) / pairs
	total := int64(per * pairs)
	pubs := make([]paho.Client, pairs)
	for i := range pairs {
		sid, pid := fmt.Sprintf("dev-%05d", 2*i), fmt.Sprintf("dev-%05d", 2*i+1)
		sub := authMustClient(b, "tcp://"+e.tcp, sid, sid, secret(sid))
		waitToken(b, "subscribe", sub.Subscribe("pair/"+pid+"/#", 1, func(paho.Client, paho.Message) {
			if received.Add(1) == total {
				close(done)
			}
		}))
		pubs[i] = authMustClient(b, "tcp://"+e.tcp, pid, pid, secret(pid))
	}
	payload := make([]byte, 64)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := fmt.Sprintf("pair/dev-%05d/m", 2*i+1)
			sem := make(chan struct{}, window)
			for range per {
				sem <- struct{}{}
				tok := c.Publish(topic, 1, false, payload)
				go func() { tok.Wait(); <-sem }()
			}
		}()
	}
	wg.Wait()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		b.Fatalf("received %d of %d", received.Load(), total)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(total)/el.Seconds(), "msgs/s")
}

// BenchmarkPairsQoS1RulesInterleaved is BenchmarkPairsQoS1Rules on one
// broker and one set of connections, switching between no rules and 100
// rules every round (ABAB...), so that a shared machine's drifting load
// falls on both alike. b.N is the number of messages; it reports each
// mode's rate and the ratio.
//
//	go test -run XXX -bench PairsQoS1RulesInterleaved -benchtime 400000x ./broker/
func BenchmarkPairsQoS1RulesInterleaved(b *testing.B) {
	const pairs, window, registered, rounds = 8, 64, 10000, 10
	e := benchAuthBroker(b)
	benchRegistry(b, e.reg, registered)
	rules := mustRules(b, benchRules()...)
	secret := func(id string) string {
		_, s, err := e.reg.RotateSecret(context.Background(), id)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	var received atomic.Int64
	pubs := make([]paho.Client, pairs)
	for i := range pairs {
		sid, pid := fmt.Sprintf("dev-%05d", 2*i), fmt.Sprintf("dev-%05d", 2*i+1)
		sub := authMustClient(b, "tcp://"+e.tcp, sid, sid, secret(sid))
		waitToken(b, "subscribe", sub.Subscribe("pair/"+pid+"/#", 1, func(paho.Client, paho.Message) { received.Add(1) }))
		pubs[i] = authMustClient(b, "tcp://"+e.tcp, pid, pid, secret(pid))
	}
	per := max(1, b.N/(rounds*pairs))
	payload := make([]byte, 64)
	var took [2]time.Duration
	var sent [2]int64
	b.ResetTimer()
	for r := range rounds {
		mode := r % 2
		if mode == 1 {
			e.auth.SetRules(rules)
		} else {
			e.auth.SetRules(nil)
		}
		want := received.Load() + int64(per*pairs)
		start := time.Now()
		var wg sync.WaitGroup
		for i, c := range pubs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				topic := fmt.Sprintf("pair/dev-%05d/m", 2*i+1)
				sem := make(chan struct{}, window)
				for range per {
					sem <- struct{}{}
					tok := c.Publish(topic, 1, false, payload)
					go func() { tok.Wait(); <-sem }()
				}
			}()
		}
		wg.Wait()
		deadline := time.Now().Add(60 * time.Second)
		for received.Load() < want {
			if time.Now().After(deadline) {
				b.Fatalf("round %d: received %d of %d", r, received.Load(), want)
			}
			time.Sleep(200 * time.Microsecond)
		}
		took[mode] += time.Since(start)
		sent[mode] += int64(per * pairs)
	}
	b.StopTimer()
	none, with := float64(sent[0])/took[0].Seconds(), float64(sent[1])/took[1].Seconds()
	b.ReportMetric(none, "msgs/s-no-rules")
	b.ReportMetric(with, "msgs/s-100-rules")
	b.ReportMetric(with/none, "ratio")
}
