package devices

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testmqtt"
)

func openTestAudit(t *testing.T, db *DB, o *AuditOptions) *Audit {
	t.Helper()
	a, err := OpenAudit(context.Background(), db, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func TestAuditAddListPages(t *testing.T) {
	_, db := openTestRegistry(t)
	a := openTestAudit(t, db, nil)
	ctx := context.Background()
	for i, act := range []string{AuditLogin, AuditDeviceCreated, AuditDeviceDeleted, AuditLogin, AuditTokenRevoked} {
		e := AuditEntry{Action: act, Actor: "admin", Via: "session", Target: "d" + string(rune('0'+i)), Remote: "127.0.0.1"}
		if err := a.Add(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	var got []AuditEntry
	cursor := ""
	for {
		page, next, err := a.List(ctx, AuditQuery{Limit: 2, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, page...)
		if cursor = next; cursor == "" {
			break
		}
	}
	if len(got) != 5 || got[0].Action != AuditTokenRevoked || got[4].Target != "d0" {
		t.Fatalf("entries, newest first: %+v", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i].ID >= got[i-1].ID {
			t.Fatalf("not newest first: %+v", got)
		}
	}
	logins, _, err := a.List(ctx, AuditQuery{Action: AuditLogin})
	if err != nil || len(logins) != 2 {
		t.Fatalf("filter by action: %+v %v", logins, err)
	}
	for _, bad := range []AuditQuery{{Limit: -1}, {Limit: MaxPage + 1}, {Cursor: "!!"}, {Cursor: "YWJj"}} {
		var ie *InvalidError
		if _, _, err := a.List(ctx, bad); !errors.As(err, &ie) {
			t.Errorf("%+v: %v, want *InvalidError", bad, err)
		}
	}
}

func TestAuditNoteIsWrittenAndBounded(t *testing.T) {
	r, db := openTestRegistry(t)
	a := openTestAudit(t, db, nil)
	r.SetAudit(a)
	r.LoginRefused("mallory\x00\n"+strings.Repeat("x", 500), "10.0.0.9", "mqtt/tcp", "bad_credentials")
	var list []AuditEntry
	waitFor(t, func() bool {
		list, _, _ = a.List(context.Background(), AuditQuery{})
		return len(list) == 1
	})
	e := list[0]
	if e.Action != AuditLoginRefused || e.Remote != "10.0.0.9" || e.Via != "mqtt/tcp" || e.Detail != "bad_credentials" {
		t.Fatalf("entry %+v", e)
	}
	if len(e.Actor) > maxAuditField || strings.ContainsAny(e.Actor, "\x00\n") || !strings.HasPrefix(e.Actor, "mallory") {
		t.Fatalf("actor not cleaned: %q", e.Actor)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	r.LoginRefused("late", "10.0.0.9", "mqtt/tcp", "bad_credentials") // after Close: dropped, no panic
}

func TestAuditPrunesOldEntries(t *testing.T) {
	_, db := openTestRegistry(t)
	ctx := context.Background()
	a := openTestAudit(t, db, &AuditOptions{Retention: time.Hour, PruneInterval: 10 * time.Millisecond})
	old := AuditEntry{Time: time.Now().Add(-2 * time.Hour), Action: AuditLogin, Actor: "old"}
	if err := a.Add(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := a.Add(ctx, AuditEntry{Action: AuditLogin, Actor: "new"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		list, _, _ := a.List(ctx, AuditQuery{})
		return len(list) == 1 && list[0].Actor == "new"
	})
}

// TestAuditRefusedLoginsBounded: refused logins are written at most 20 a
// minute per address, the rest of the minute as one entry counting them,
// written when the next minute from that address begins, or at Close;
// other addresses and other actions are not held to it. A client sending
// login after login wrote an entry for each, 3,500 a second.
func TestAuditRefusedLoginsBounded(t *testing.T) {
	_, db := openTestRegistry(t)
	a := openTestAudit(t, db, nil)
	t0 := time.Now().Add(-time.Hour)
	note := func(at time.Time, action, remote string, n int) {
		for i := range n {
			a.Note(AuditEntry{Time: at.Add(time.Duration(i) * time.Millisecond), Action: action, Actor: "admin", Via: "http", Remote: remote, Detail: "throttled"})
		}
	}
	note(t0, AuditLoginRefused, "10.0.0.1", 100)
	note(t0, AuditLoginRefused, "10.0.0.2", 5)
	note(t0, AuditLogin, "10.0.0.1", 30)
	note(t0.Add(61*time.Second), AuditLoginRefused, "10.0.0.1", 25) // its next minute
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	list, _, err := a.List(context.Background(), AuditQuery{Limit: MaxPage})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	var folded []string
	for _, e := range list {
		if strings.Contains(e.Detail, "more refused logins") {
			folded = append(folded, e.Remote+": "+e.Detail)
			continue
		}
		count[e.Action+" "+e.Remote]++
	}
	want := map[string]int{"login_refused 10.0.0.1": 40, "login_refused 10.0.0.2": 5, "login 10.0.0.1": 30}
	for k, n := range want {
		if count[k] != n {
			t.Errorf("%s: %d entries, want %d (all: %v)", k, count[k], n, count)
		}
	}
	if len(folded) != 2 || !strings.HasPrefix(folded[0], "10.0.0.1: 5 more") || !strings.HasPrefix(folded[1], "10.0.0.1: 80 more") {
		t.Errorf("folded entries, newest first: %q; want 10.0.0.1's 5 more and 80 more", folded)
	}
}

// TestAuditRefusedAddressesBounded: with auditRefusedAddrs addresses
// followed, a new address shares the others' allowance ("*") until a
// followed minute is over; then it has its own minute again, while the
// shared one, begun later, goes on.
func TestAuditRefusedAddressesBounded(t *testing.T) {
	_, db := openTestRegistry(t)
	a := openTestAudit(t, db, nil)
	t0 := time.Now().Add(-time.Hour)
	note := func(at time.Time, remote string, n int) {
		for i := range n {
			a.Note(AuditEntry{Time: at.Add(time.Duration(i) * time.Millisecond), Action: AuditLoginRefused, Via: "http", Remote: remote, Detail: "throttled"})
		}
	}
	drained := func() {
		// 1,000 rows written one by one: under -race on a loaded machine
		// more than waitFor's 5 s (it ran out once at load 13).
		testmqtt.CheckFor(t, time.Minute, func() error {
			if n := len(a.queue); n > 0 {
				return fmt.Errorf("%d entries not written yet", n)
			}
			return nil
		})
	}
	for i := range auditRefusedAddrs {
		note(t0, fmt.Sprintf("10.0.%d.%d", i/256, i%256), 1)
		if i%1000 == 999 {
			drained() // the 10,000 rows are not what is tested: none dropped
		}
	}
	note(t0.Add(time.Second), "10.9.9.9", 3)             // shares "*"
	note(t0.Add(60500*time.Millisecond), "10.8.8.8", 25) // t0's minutes are over: its own
	note(t0.Add(60600*time.Millisecond), "10.7.7.7", 25) // and so on
	drained()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n := a.Dropped(); n != 0 {
		t.Fatalf("%d entries dropped", n)
	}
	list, _, err := a.List(context.Background(), AuditQuery{Limit: MaxPage, Action: AuditLoginRefused}) // newest first: 10.8.8.8's are on it
	if err != nil {
		t.Fatal(err)
	}
	var rows, folded int
	for _, e := range list {
		if e.Remote != "10.8.8.8" {
			continue
		}
		if strings.Contains(e.Detail, "more refused logins") {
			folded++
			if !strings.HasPrefix(e.Detail, "5 more refused logins from this address") {
				t.Errorf("10.8.8.8's summary: %q", e.Detail)
			}
			continue
		}
		rows++
	}
	if rows != auditRefusedPerMinute || folded != 1 {
		t.Fatalf("10.8.8.8: %d rows and %d summaries, want %d and 1 (its own minute)", rows, folded, auditRefusedPerMinute)
	}
}
