package broker

import (
	"context"
	"encoding/json"
	"testing"
	"time"
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
