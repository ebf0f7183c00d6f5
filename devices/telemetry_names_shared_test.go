package devices

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestTelemetryNameCapShared: two nodes on one PostgreSQL, both started
// before the device sent anything. It fills its metric names through
// node A, then connects to node B: B reads its names again and keeps it
// at the cap (new names refused, known ones stored), instead of granting
// it another MaxDeviceMetrics.
func TestTelemetryNameCapShared(t *testing.T) {
	ra, rb := twoNodes(t)
	ctx := context.Background()
	if _, _, err := ra.CreateDevice(ctx, NewDevice{ID: "roamer", Name: "roamer"}); err != nil {
		t.Fatal(err)
	}
	open := func(r *Registry) *Telemetry {
		tel, err := OpenTelemetry(ctx, r.db, &TelemetryOptions{FlushInterval: time.Hour, LastValues: r})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tel.Close() })
		r.OnOnline(tel.RefreshNames)
		return tel
	}
	ta, tb := open(ra), open(rb)
	now := time.Now()
	ra.RecordPresence(Presence{DeviceID: "roamer", Online: true, At: now})
	for i := range MaxDeviceMetrics / 256 {
		if !ta.Add("roamer", namesSample(t, fmt.Sprintf("m%d_", i), 256, 0), now) {
			t.Fatalf("sample %d refused on A", i)
		}
	}
	if err := ta.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rb.RecordPresence(Presence{DeviceID: "roamer", Online: true, At: now.Add(time.Second)})
	probe := 0
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		// A new name each time: refused once B knows the device's names.
		probe++
		if tb.Add("roamer", mustSample(t, fmt.Sprintf(`{"probe%d":1}`, probe)), now) {
			return fmt.Errorf("B took %d new names past the cap", probe)
		}
		return nil
	})
	if !tb.Add("roamer", mustSample(t, `{"m2_7":1}`), now) {
		t.Fatal("a known name refused on B")
	}
}
