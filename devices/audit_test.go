package devices

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
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
