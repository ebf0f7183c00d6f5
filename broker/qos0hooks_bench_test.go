package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/cputime"
)

// serveEnv is a broker with the hooks tether serve gives it (cmd/tether,
// app.newBroker), in its order: the access hook (auth, ACL, presence,
// bans) on a SQLite registry, the publish rates, the retained bound, the
// telemetry history, commands and twins, backpressure, the retained
// delivery, the SQLite session store; anonymous clients allowed, as
// scripts/bench-compare.sh runs it (tether serve --allow-anonymous).
type serveEnv struct {
	b    *Broker
	addr string
	stop func()
}

// startServeEnv starts it on a temporary data directory. The publish and
// history rates are set far above what a benchmark sends, so that their
// checks run on every message without ever holding one back (at the
// defaults a device is held to 100 PUBLISH a second).
func startServeEnv(tb testing.TB) *serveEnv {
	tb.Helper()
	ctx := context.Background()
	log := storeLogger()
	dir, err := os.MkdirTemp("", "tether-qos0-bench-")
	if err != nil {
		tb.Fatal(err)
	}
	var closers []func()
	stop := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		os.RemoveAll(dir)
	}
	fail := func(err error) {
		stop()
		tb.Fatal(err)
	}
	db, err := devices.OpenDB(dir)
	if err != nil {
		fail(err)
	}
	closers = append(closers, func() { db.Close() })
	reg, err := devices.OpenRegistry(ctx, db, log)
	if err != nil {
		fail(err)
	}
	closers = append(closers, func() { reg.Close() })
	reg.SetPasswordCost(bcrypt.MinCost)
	tel, err := devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{Logger: log, LastValues: reg,
		DeviceValuesRate: benchValuesRate, DeviceValuesBurst: benchValuesRate})
	if err != nil {
		fail(err)
	}
	closers = append(closers, func() { tel.Close() })
	cmds, err := devices.OpenCommands(ctx, db, &devices.CommandsOptions{Logger: log})
	if err != nil {
		fail(err)
	}
	closers = append(closers, func() { cmds.Close() })
	twins, err := devices.OpenTwins(ctx, db, &devices.TwinsOptions{Logger: log})
	if err != nil {
		fail(err)
	}
	closers = append(closers, func() { twins.Close() })
	reg.Attach(tel, cmds, twins)
	store, err := sessions.Open(dir, &sessions.Options{Logger: log})
	if err != nil {
		fail(err)
	}
	closers = append(closers, func() { store.Close() })
	auth := NewAuth(AuthOptions{Registry: reg, AllowAnonymous: true, Logger: log, Sessions: store,
		Logins: devices.NewLoginLimiter(nil), Bans: devices.NewBans(&devices.BanOptions{})})
	rl := DefaultRetainedLimitOptions()
	rl.Identity, rl.Logger = auth.Identity, log
	retainLimit := NewRetainedLimit(rl)
	pubLimit := NewPublishLimit(PublishLimitOptions{PerClient: 1_000_000_000, DeviceRate: 1_000_000_000, Identity: auth.Identity})
	telHook, cmdHook, twinHook := NewTelemetryHook(tel, log), NewCommandHook(cmds, log), NewTwinHook(twins, log)
	telHook.SetIdentify(auth.Identity)
	cmdHook.SetIdentify(auth.Identity)
	bp := NewBackpressure(time.Second) // mqtt.backpressure_wait's default
	retained := NewRetained()

	o := DefaultOptions()
	o.TCPAddr, o.Logger, o.Access, o.AllowAnonymous = "127.0.0.1:0", log, auth, true
	o.Hooks = []mqtt.Hook{pubLimit, retainLimit, telHook, cmdHook, twinHook, bp, retained, store}
	br, err := New(o)
	if err != nil {
		fail(err)
	}
	store.Attach(br.Server)
	bp.Attach(br.Server)
	retained.Attach(br.Server)
	retainLimit.Attach(br.Server)
	cmdHook.Attach(br.Server)
	twinHook.Attach(br.Server)
	if err := br.Start(); err != nil {
		fail(err)
	}
	closers = append(closers, func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = br.Shutdown(sctx)
	})
	return &serveEnv{b: br, addr: br.TCP.Address(), stop: stop}
}

// engineClient is the engine's record of the connected client id.
func (e *serveEnv) engineClient(tb testing.TB, id string) *mqtt.Client {
	tb.Helper()
	var cl *mqtt.Client
	checkFor(tb, 10*time.Second, func() error {
		var ok bool
		if cl, ok = e.b.Server.Clients.Get(id); !ok {
			return errNotYet
		}
		return nil
	})
	return cl
}

var errNotYet = errors.New("not yet")

// BenchmarkRoutedQoS0Hooks is what Tether's own hooks cost per QoS 0
// message routed from one publisher to one subscriber, on a broker with
// the hooks tether serve runs (serveEnv), with the traffic of
// scripts/bench-compare.sh: anonymous MQTT 3.1.1 clients, a 64-byte
// payload on bench/pairs/1, a subscriber to it at QoS 0. Two parts:
//
//   - hooks: the hook calls the engine makes for one such message
//     (OnPacketRead, OnACLCheck of the publish, OnPublish, OnACLCheck of
//     the delivery, OnPublished, OnPacketProcessed on the publisher's
//     side; OnPacketEncode, OnPacketSent on the subscriber's), on the
//     engine's own records of the two connected clients, dispatched as
//     mochi's Hooks dispatches them (each hook's Provides asked before
//     each call, the packet copied in and out): ns/op, allocs/op and
//     cpu-ns/msg (the process's CPU time, which a busy machine inflates
//     less than the time) are per message, the engine's own work left
//     out. The engine's hooks are the broker's hookSet, its only one.
//   - routed: the same messages over TCP, the engine's work and the
//     benchmark's clients included: cpu-us/msg is the process's CPU time
//     per message.
//
// Run it with:
//
//	go test -run XXX -bench RoutedQoS0Hooks -benchmem ./broker/
func BenchmarkRoutedQoS0Hooks(b *testing.B) {
	e := startServeEnv(b)
	defer e.stop()
	const topic = "bench/pairs/1"
	sub := rawConnect(b, e.addr, "bench-sub")
	defer sub.Close()
	rawSubscribe(b, sub, topic)
	pub := rawConnect(b, e.addr, "bench-pub")
	defer pub.Close()
	payload := bytes.Repeat([]byte{'x'}, 64)

	b.Run("hooks", func(b *testing.B) {
		pcl, scl := e.engineClient(b, "bench-pub"), e.engineClient(b, "bench-sub")
		hooks := e.b.hooks
		in := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Remaining: 2 + len(topic) + len(payload)},
			ProtocolVersion: 4, TopicName: topic, Payload: payload}
		// The delivery as the engine writes it (publishToClient, then
		// Client.WritePacket); the engine's copy of the packet is left out.
		out := in.Copy(false)
		out.Origin = pcl.ID
		out.Mods.AllowResponseInfo = true
		wire := new(bytes.Buffer)
		if err := out.PublishEncode(wire); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		n, cpu0 := 0, cputime.Process()
		for b.Loop() {
			n++
			pk := in
			var err error
			for _, h := range hooks {
				if h.Provides(mqtt.OnPacketRead) {
					var npk packets.Packet
					if npk, err = h.OnPacketRead(pcl, pk); err != nil {
						b.Fatal(err)
					}
					pk = npk
				}
			}
			aclCheck(b, hooks, pcl, pk.TopicName, true)
			for _, h := range hooks {
				if h.Provides(mqtt.OnPublish) {
					var npk packets.Packet
					if npk, err = h.OnPublish(pcl, pk); err != nil {
						b.Fatal(err)
					}
					pk = npk
				}
			}
			aclCheck(b, hooks, scl, pk.TopicName, false)
			for _, h := range hooks {
				if h.Provides(mqtt.OnPublished) {
					h.OnPublished(pcl, pk)
				}
			}
			for _, h := range hooks {
				if h.Provides(mqtt.OnPacketProcessed) {
					h.OnPacketProcessed(pcl, pk, nil)
				}
			}
			o := out
			for _, h := range hooks {
				if h.Provides(mqtt.OnPacketEncode) {
					o = h.OnPacketEncode(scl, o)
				}
			}
			for _, h := range hooks {
				if h.Provides(mqtt.OnPacketSent) {
					h.OnPacketSent(scl, o, wire.Bytes())
				}
			}
		}
		b.ReportMetric(float64((cputime.Process()-cpu0).Nanoseconds())/float64(n), "cpu-ns/msg")
	})

	b.Run("routed", func(b *testing.B) {
		var received atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			r := bufio.NewReaderSize(sub, 1<<16)
			for {
				typ, _, err := readPacket(r)
				if err != nil {
					return
				}
				if typ == packets.Publish {
					received.Add(1)
				}
			}
		}()
		const burst = 64 // messages per write
		var buf bytes.Buffer
		for range burst {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4, TopicName: topic, Payload: payload}
			if err := pk.PublishEncode(&buf); err != nil {
				b.Fatal(err)
			}
		}
		msgs := buf.Bytes()
		writes := (b.N + burst - 1) / burst
		total := int64(writes * burst)
		base := received.Load()
		runtime.GC()
		b.ResetTimer()
		cpu0 := cputime.Process()
		sent := int64(0)
		for range writes {
			// At most a few bursts ahead of the subscriber: nothing is
			// dropped at its send queue (mqtt.client_queue_size).
			for sent-(received.Load()-base) > 2*burst {
				runtime.Gosched()
			}
			if _, err := pub.Write(msgs); err != nil {
				b.Fatal(err)
			}
			sent += burst
		}
		deadline := time.Now().Add(30 * time.Second)
		for received.Load()-base < total && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
		cpu := cputime.Process() - cpu0
		b.StopTimer()
		if got := received.Load() - base; got < total {
			b.Fatalf("routed %d of %d", got, total)
		}
		b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(total), "cpu-us/msg")
		sub.SetReadDeadline(time.Now()) // ends the reader for the next run
		<-done
		sub.SetReadDeadline(time.Time{})
	})
}

// aclCheck asks the hooks as the engine's Hooks.OnACLCheck does: the
// first that allows decides.
func aclCheck(b *testing.B, hooks []mqtt.Hook, cl *mqtt.Client, topic string, write bool) {
	for _, h := range hooks {
		if h.Provides(mqtt.OnACLCheck) && h.OnACLCheck(cl, topic, write) {
			return
		}
	}
	b.Fatalf("%s refused %q (write %v)", cl.ID, topic, write)
}
