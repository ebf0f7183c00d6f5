package devices

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestCommandsAcrossNodes: on PostgreSQL a command created through node
// A's store is open on node B (whose broker hook sees it delivered and
// answered); B's record of the answer wakes A's Wait; an expiry swept by
// either node closes the command on both.
func TestCommandsAcrossNodes(t *testing.T) {
	if testPG == nil {
		t.Skip("PostgreSQL pass only")
	}
	ctx := context.Background()
	url := testPG.NewDatabase(t)
	stores := make([]*Commands, 2)
	for i := range stores {
		db, err := database.OpenPostgres(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		c, err := OpenCommands(ctx, db, &CommandsOptions{SweepInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		stores[i] = c
	}
	a, b := stores[0], stores[1]

	cmd, err := a.Create(ctx, NewCommand{DeviceID: "d1", Name: "reboot", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if dev, ok := b.OpenFor(cmd.ID); !ok || dev != "d1" {
			return errors.New("not open on b")
		}
		return nil
	})
	done := make(chan Command, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		got, _ := a.Wait(wctx, cmd.ID)
		done <- got
	}()
	b.RecordDelivered(cmd.ID, "d1")
	b.RecordResponse(cmd.ID, "d1", true, []byte(`{"up":true}`), "")
	if got := <-done; got.Status != StatusSucceeded || string(got.Result) != `{"up":true}` {
		t.Fatalf("a's Wait: %+v", got)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if _, ok := a.OpenFor(cmd.ID); ok {
			return errors.New("still open on a")
		}
		return nil
	})

	short, err := b.Create(ctx, NewCommand{DeviceID: "d1", Name: "ping", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if got, err := a.Wait(wctx, short.ID); err != nil || got.Status != StatusExpired {
		t.Fatalf("a's Wait for a command created on b: %+v %v", got, err)
	}
	for _, c := range stores {
		testmqtt.CheckFor(t, 10*time.Second, func() error {
			if _, ok := c.OpenFor(short.ID); ok {
				return errors.New("expired command still open")
			}
			return nil
		})
	}
}
