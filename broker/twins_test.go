package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
)

// TestTwinDesiredRetainedAndDelta: desired state reaches a device that
// subscribes later (retained, with its version), and the delta empties
// when the reported state catches up.
func TestTwinDesiredRetainedAndDelta(t *testing.T) {
	for _, k := range clientKinds {
		t.Run(k.name, func(t *testing.T) {
			ctx := context.Background()
			n := startDevNode(t, "dev-1")
			if _, err := n.twinHook.SetDesired(ctx, "dev-1", []byte(`{"rate":5,"mode":"eco"}`)); err != nil {
				t.Fatal(err)
			}
			tw, err := n.twinHook.SetDesired(ctx, "dev-1", []byte(`{"mode":"fast"}`))
			if err != nil || tw.DesiredVersion != 2 || len(tw.Delta) != 2 {
				t.Fatalf("%+v, %v", tw, err)
			}
			var got inbox
			dev := n.connect(t, k, "dev-1", true, got.add)
			dev.subscribe(t, "devices/dev-1/twin/desired", 1)
			checkFor(t, 5*time.Second, func() error {
				if got.len() != 1 {
					return errorf("got %d messages", got.len())
				}
				return nil
			})
			var doc map[string]any
			if err := json.Unmarshal(got.get()[0].payload, &doc); err != nil {
				t.Fatal(err)
			}
			if doc["version"] != 2.0 || doc["rate"] != 5.0 || doc["mode"] != "fast" {
				t.Fatalf("desired document %v", doc)
			}
			dev.publish(t, "devices/dev-1/twin/reported", []byte(`{"rate":5}`), 1)
			dev.publish(t, "devices/dev-1/twin/reported", []byte(`not json`), 1)
			dev.publish(t, "devices/dev-1/twin/reported", []byte(`{"mode":"fast","uptime":3}`), 0)
			checkFor(t, 5*time.Second, func() error {
				tw, err := n.twins.Get(ctx, "dev-1")
				if err != nil || tw.ReportedVersion != 2 || len(tw.Delta) != 0 {
					return errorf("%+v, %v", tw, err)
				}
				return nil
			})
			if _, _, rejected := n.twins.Stats(); rejected != 1 {
				t.Errorf("rejected %d", rejected)
			}
		})
	}
}

// TestTwinTooDeepReportedAlongsideOthers: a device that publishes reported
// patches nested past devices.MaxTwinDepth (and past SQLite's 1,000
// levels) while another device reports normally: the deep patches are
// rejected and counted like any other invalid report, and every normal
// patch, of both devices, is merged in order.
func TestTwinTooDeepReportedAlongsideOthers(t *testing.T) {
	for _, k := range []clientKind{clientKinds[0], clientKinds[2]} {
		t.Run(k.name, func(t *testing.T) {
			ctx := context.Background()
			n := startDevNode(t, "dev-ok", "dev-deep")
			ok := n.connect(t, k, "dev-ok", true, nil)
			deep := n.connect(t, k, "dev-deep", true, nil)
			nested := func(depth int) []byte {
				return []byte(strings.Repeat(`{"a":`, depth) + "1" + strings.Repeat("}", depth))
			}
			const rounds = 60
			var wg sync.WaitGroup
			errs := make(chan error, 2)
			wg.Go(func() {
				for i := range rounds {
					if err := ok.send("devices/dev-ok/twin/reported", fmt.Appendf(nil, `{"n":%d}`, i+1), 1); err != nil {
						errs <- err
						return
					}
				}
			})
			wg.Go(func() {
				for i := range rounds {
					p := nested(devices.MaxTwinDepth + 1)
					if i%2 == 0 {
						p = nested(1001)
					}
					if i%10 == 0 {
						p = fmt.Appendf(nil, `{"m":%d}`, i) // some of its reports are fine
					}
					if err := deep.send("devices/dev-deep/twin/reported", p, 1); err != nil {
						errs <- err
						return
					}
				}
			})
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			const deepOK = rounds / 10
			checkFor(t, 5*time.Second, func() error {
				if err := n.twins.Flush(ctx); err != nil {
					return err
				}
				if merged, _, rejected := n.twins.Stats(); merged != rounds+deepOK || rejected != rounds-deepOK {
					return errorf("merged %d, rejected %d; want %d, %d", merged, rejected, rounds+deepOK, rounds-deepOK)
				}
				return nil
			})
			tw, err := n.twins.Get(ctx, "dev-ok")
			if err != nil || tw.ReportedVersion != rounds || tw.Reported["n"] != float64(rounds) {
				t.Fatalf("dev-ok: %+v, %v; want version %d", tw, err, rounds)
			}
			tw, err = n.twins.Get(ctx, "dev-deep")
			if err != nil || tw.ReportedVersion != deepOK || len(tw.Reported) != 1 || tw.Reported["m"] != float64(rounds-10) {
				t.Fatalf("dev-deep: %+v, %v; want version %d with only m", tw, err, deepOK)
			}
		})
	}
}
