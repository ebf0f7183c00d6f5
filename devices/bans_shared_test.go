package devices

import (
	"testing"
	"time"
)

type recordShare struct {
	refused []Refusal
	banned  []Ban
	lifted  []Ban
}

func (r *recordShare) Refused(x Refusal) { r.refused = append(r.refused, x) }
func (r *recordShare) Banned(x Ban)      { r.banned = append(r.banned, x) }
func (r *recordShare) Lifted(x Ban)      { r.lifted = append(r.lifted, x) }

// TestBansShared: refusals seen elsewhere count but decide nothing; a
// ban decided here is shared; another node's ban is taken up once, and a
// lifted ban is not brought back by a copy of it.
func TestBansShared(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	b := NewBans(&BanOptions{Threshold: 3, Window: time.Minute, Duration: 10 * time.Minute, Node: "a", Now: clk.Now})
	var rec recordShare
	b.Share(&rec)
	ended := make(chan Ban, 4)
	b.OnBan(func(x Ban) { ended <- x })

	for range 3 {
		b.RefusedElsewhere(Refusal{Kind: "login", Address: "203.0.113.7", Identity: "x", Node: "b"})
	}
	if _, ok := b.Banned("y", "203.0.113.7"); ok || len(rec.banned) != 0 || len(rec.refused) != 0 {
		t.Fatalf("refusals seen elsewhere decided a ban here: %+v", rec)
	}
	b.RefusedElsewhere(Refusal{Kind: "login", Address: "not an address"})
	b.RefusedElsewhere(Refusal{Kind: "other", Address: "203.0.113.8"})
	if len(b.Offenders(10)) != 2 { // ip: and id:x@
		t.Fatalf("bad refusals from elsewhere counted: %+v", b.Offenders(10))
	}
	// The fourth refusal, seen here, decides; it and the ban are shared.
	b.LoginFailed("z", "203.0.113.7")
	if ban, ok := b.Banned("y", "203.0.113.7"); !ok || ban.Node != "a" || len(rec.banned) != 1 || len(rec.refused) != 1 || rec.refused[0].Node != "a" {
		t.Fatalf("ban %+v %v, shared %+v", ban, ok, rec)
	}
	<-ended

	// Another node's ban: taken up once, ends connections here.
	other := Ban{Key: "forged", Kind: "identity", Address: "198.51.100.1", Identity: "eve", Since: clk.Now(), Until: clk.Now().Add(time.Hour), Node: "b"}
	if !b.Adopt(other) || b.Adopt(other) {
		t.Fatal("another node's ban not taken up exactly once")
	}
	if got := <-ended; got.Key != IdentityKey("eve", "198.51.100.1") || !got.Until.Equal(clk.Now().Add(10*time.Minute)) {
		t.Fatalf("adopted ban: %+v (key rebuilt, until bounded by this node's duration)", got)
	}
	if b.Adopt(Ban{Kind: "address", Address: "nonsense", Until: clk.Now().Add(time.Minute)}) {
		t.Fatal("a ban of no address taken up")
	}
	// Lifted here: shared, and another node's stale copy does not bring
	// it back; a later ban of the same key does.
	lifted, ok := b.Lift(AddressKey("203.0.113.7"))
	if !ok || len(rec.lifted) != 1 {
		t.Fatalf("lift: %v %+v", ok, rec.lifted)
	}
	if b.Adopt(lifted) {
		t.Fatal("a lifted ban came back")
	}
	st := b.State()
	if len(st.Lifts) != 1 || len(st.Bans) != 1 {
		t.Fatalf("state: %+v", st)
	}
	clk.Add(time.Second)
	again := lifted
	again.Since, again.Until = clk.Now(), clk.Now().Add(time.Minute)
	if !b.Adopt(again) {
		t.Fatal("a new ban after a lift not taken up")
	}
	// Lifted elsewhere, and merged into a fresh node.
	b.LiftElsewhere(again.Key, again.Since, again.Until)
	if _, ok := b.Banned("", "203.0.113.7"); ok {
		t.Fatal("lifted elsewhere, still banned here")
	}
	fresh := NewBans(&BanOptions{Threshold: 3, Node: "c", Now: clk.Now})
	fresh.Merge(BanState{Bans: []Ban{lifted, again}, Lifts: b.State().Lifts})
	if _, ok := fresh.Banned("", "203.0.113.7"); ok {
		t.Fatal("merge brought a lifted ban back")
	}
}
