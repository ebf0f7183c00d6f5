package devices

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// deepPatch is a patch nested depth levels deep, the patch itself
// included: {"a":{"a":...{"a":1}...}}.
func deepPatch(depth int) []byte {
	return []byte(strings.Repeat(`{"a":`, depth) + "1" + strings.Repeat("}", depth))
}

// deepArrayPatch is the same with arrays below the top object:
// {"a":[[...[1]...]]}.
func deepArrayPatch(depth int) []byte {
	return []byte(`{"a":` + strings.Repeat("[", depth-1) + "1" + strings.Repeat("]", depth-1) + "}")
}

// jsonDepth is how deep objects and arrays nest in v, as encoding/json
// decodes it: the oracle of jsonDeeperThan.
func jsonDepth(v any) int {
	d := 0
	switch v := v.(type) {
	case map[string]any:
		for _, e := range v {
			d = max(d, jsonDepth(e))
		}
	case []any:
		for _, e := range v {
			d = max(d, jsonDepth(e))
		}
	default:
		return 0
	}
	return d + 1
}

func TestCheckTwinPatchDepth(t *testing.T) {
	for _, tc := range []struct {
		name  string
		patch []byte
		ok    bool
	}{
		{"objects at the limit", deepPatch(MaxTwinDepth), true},
		{"objects past the limit", deepPatch(MaxTwinDepth + 1), false},
		{"arrays at the limit", deepArrayPatch(MaxTwinDepth), true},
		{"arrays past the limit", deepArrayPatch(MaxTwinDepth + 1), false},
		{"SQLite's limit", deepPatch(1000), false},
		{"past SQLite's limit", deepPatch(1001), false},
		{"past encoding/json's limit", deepPatch(10001), false},
		{"wide, not deep", []byte(`{"a":{"b":1},"c":[{},{}],"d":[[1],[2]]}`), true},
		{"brackets in strings", []byte(`{"a":"` + strings.Repeat("{[", 100) + `"}`), true},
		{"escaped quotes in strings", []byte(`{"a\"{":"\\\\\"` + strings.Repeat("[", 100) + `\""}`), true},
		{"deep after an escaped quote", []byte(`{"b":"\"",` + string(deepPatch(MaxTwinDepth + 1)[1:])), false},
		{"at the limit after an escaped quote", []byte(`{"b":"\"",` + string(deepPatch(MaxTwinDepth)[1:])), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, field := range []string{"desired", "reported"} {
				_, err := CheckTwinPatch(field, tc.patch)
				if tc.ok != (err == nil) {
					t.Fatalf("%s: %v", field, err)
				}
				var inv *InvalidError
				if err != nil && (!errors.As(err, &inv) || inv.Field != field) {
					t.Fatalf("%s: not an InvalidError of the field: %#v", field, err)
				}
			}
		})
	}
	_, err := CheckTwinPatch("reported", deepPatch(MaxTwinDepth+1))
	if want := "nested deeper than 32 levels"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
}

// TestTwinDepthLimit: a desired or reported patch past MaxTwinDepth (or
// past SQLite's 1,000 levels) is refused as invalid and changes nothing;
// one at the limit is merged.
func TestTwinDepthLimit(t *testing.T) {
	ctx := context.Background()
	tw, err := OpenTwins(ctx, openTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tw.Close()
	if _, err := tw.PatchDesired(ctx, "d1", []byte(`{"mode":"eco"}`)); err != nil {
		t.Fatal(err)
	}
	tw.RecordReported("d1", []byte(`{"mode":"eco"}`))
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before, err := tw.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	for _, depth := range []int{MaxTwinDepth + 1, 1001} {
		var inv *InvalidError
		if _, err := tw.PatchDesired(ctx, "d1", deepPatch(depth)); !errors.As(err, &inv) {
			t.Fatalf("desired %d deep: %v", depth, err)
		}
		if tw.RecordReported("d1", deepPatch(depth)) {
			t.Fatalf("reported %d deep queued", depth)
		}
	}
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := tw.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if !equalJSON(t, before, after) {
		t.Fatalf("refused patches changed the twin: %+v, then %+v", before, after)
	}
	if merged, _, rejected := tw.Stats(); merged != 1 || rejected != 2 {
		t.Fatalf("merged %d, rejected %d; want 1, 2", merged, rejected)
	}

	got, err := tw.PatchDesired(ctx, "d1", deepPatch(MaxTwinDepth))
	if err != nil || got.DesiredVersion != 2 {
		t.Fatalf("desired at the limit: %+v, %v", got, err)
	}
	if !tw.RecordReported("d1", deepPatch(MaxTwinDepth)) {
		t.Fatal("reported at the limit refused")
	}
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err = tw.Get(ctx, "d1"); err != nil || got.ReportedVersion != 2 || jsonDepth(got.Reported) != MaxTwinDepth {
		t.Fatalf("reported at the limit: %+v, %v", got, err)
	}
}

// TestTwinMergeStaysWithinDepth: patches at the limit merged into a
// stored twin at the limit, along the same path and across it, never make
// it deeper than MaxTwinDepth (a merge is as deep as the deeper of its
// two documents), so what is stored always passes CheckTwinPatch.
func TestTwinMergeStaysWithinDepth(t *testing.T) {
	ctx := context.Background()
	tw, err := OpenTwins(ctx, openTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tw.Close()
	// Along "a" all the way down, then patches that branch off at
	// several levels with a subtree as deep as allowed, replace a
	// leaf with an object, and an object with an array.
	patches := [][]byte{deepPatch(MaxTwinDepth)}
	for _, at := range []int{1, 2, MaxTwinDepth / 2, MaxTwinDepth - 1} {
		// Down at levels along "a", then "b": a subtree reaching the limit.
		sub := deepPatch(MaxTwinDepth - at)
		patches = append(patches, []byte(strings.Repeat(`{"a":`, at-1)+`{"b":`+string(sub)+`}`+strings.Repeat("}", at-1)))
	}
	patches = append(patches, deepArrayPatch(MaxTwinDepth), []byte(`{"a":null}`), deepPatch(MaxTwinDepth))
	for i, p := range patches {
		if _, err := CheckTwinPatch("desired", p); err != nil {
			t.Fatalf("patch %d: %v", i, err)
		}
		got, err := tw.PatchDesired(ctx, "d1", p)
		if err != nil {
			t.Fatalf("desired patch %d: %v", i, err)
		}
		if !tw.RecordReported("d1", p) {
			t.Fatalf("reported patch %d refused", i)
		}
		if err := tw.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if got, err = tw.Get(ctx, "d1"); err != nil || got.ReportedVersion != int64(i+1) {
			t.Fatalf("after patch %d: %+v, %v", i, got, err)
		}
		for _, doc := range []map[string]any{got.Desired, got.Reported} {
			b, _ := json.Marshal(doc)
			if d := jsonDepth(doc); d > MaxTwinDepth {
				t.Fatalf("after patch %d the stored twin is %d deep: %s", i, d, b)
			}
			if _, err := CheckTwinPatch("reported", b); err != nil {
				t.Fatalf("after patch %d the stored twin fails the check: %v", i, err)
			}
		}
	}
}

// equalJSON compares two twins as JSON.
func equalJSON(t *testing.T, a, b Twin) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}

// FuzzCheckTwinPatch: whatever CheckTwinPatch accepts is a JSON object,
// as encoding/json reads it, nested at most MaxTwinDepth levels; what it
// refuses is an InvalidError; and its depth check agrees with the depth
// of what encoding/json decodes.
func FuzzCheckTwinPatch(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `[]`, `{"a":{"b":[1,{"c":null}]}}`, `{"a":"{[\"]}"}`, `{"version":1}`,
		string(deepPatch(MaxTwinDepth)), string(deepPatch(MaxTwinDepth + 1)), string(deepArrayPatch(MaxTwinDepth + 1)), string(deepPatch(1001))} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := CheckTwinPatch("reported", in)
		var v any
		// JSON's whitespace around it; valid UTF-8 (the decoder alone
		// takes any); no U+0000, which PostgreSQL's jsonb refuses.
		decoded := json.Unmarshal(bytes.Trim(in, " \t\r\n"), &v) == nil && utf8.Valid(in) && !hasNUL(v)
		_, isObject := v.(map[string]any)
		if decoded && jsonDeeperThan(in, MaxTwinDepth) != (jsonDepth(v) > MaxTwinDepth) {
			t.Fatalf("%q: the scan says deeper than %d: %v; the decoder reads %d levels", in, MaxTwinDepth, !(jsonDepth(v) > MaxTwinDepth), jsonDepth(v))
		}
		if err != nil {
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("%q: %#v is not an InvalidError", in, err)
			}
			if decoded && isObject && len(in) <= MaxTwinPatch && jsonDepth(v) <= MaxTwinDepth {
				t.Fatalf("%q: a valid object %d deep refused: %v", in, jsonDepth(v), err)
			}
			return
		}
		if !decoded || !isObject || m == nil {
			t.Fatalf("%q accepted, not a JSON object", in)
		}
		if d := jsonDepth(v); d > MaxTwinDepth {
			t.Fatalf("%q accepted, %d deep", in, d)
		}
	})
}

// TestTwinPatchTextBothDatabasesTake: a patch is refused, before either
// database sees it, when its text is one SQLite or PostgreSQL would not
// take as JSON although Go's decoder does: invalid UTF-8, U+0000 in a
// string or a key (PostgreSQL's jsonb refuses it), whitespace that is not
// JSON's around it. A desired patch was a 500 on PostgreSQL, a reported
// one lost.
func TestTwinPatchTextBothDatabasesTake(t *testing.T) {
	ctx := context.Background()
	tw, err := OpenTwins(ctx, openTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tw.Close()
	if _, err := tw.PatchDesired(ctx, "d1", []byte(" \n{\"mode\":\"éco\",\"unit\":\"\\u00b0C\"}\t\r\n")); err != nil {
		t.Fatalf("JSON whitespace and escaped or plain UTF-8: %v", err)
	}
	before, err := tw.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"\u00a0{\"a\":1}",        // NBSP before
		"{\"a\":1}\u2028",        // a line separator after
		"{\"a\":\"\xff\"}",       // invalid UTF-8 in a string
		"{\"\xc3\":1}",           // and in a key
		`{"a":"x\u0000y"}`,       // U+0000 in a string
		`{"a\u0000":1}`,          // in a key
		`{"a":{"b":["\u0000"]}}`, // deeper
	} {
		var inv *InvalidError
		if _, err := tw.PatchDesired(ctx, "d1", []byte(p)); !errors.As(err, &inv) {
			t.Errorf("desired %q: %v, want an InvalidError", p, err)
		}
		if tw.RecordReported("d1", []byte(p)) {
			t.Errorf("reported %q queued", p)
		}
	}
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := tw.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if !equalJSON(t, before, after) {
		t.Fatalf("refused patches changed the twin: %+v, then %+v", before, after)
	}
}

// TestTwinStateLimit: each patch is bounded (MaxTwinPatch) and so is what
// patches add up to: a desired patch that would make the desired state
// longer than MaxTwinState is an InvalidError and a reported one is
// refused (counted as rejected), both changing nothing; a patch that
// leaves a state no longer merges, even one stored past the bound (by an
// earlier release). Before, a device's reported patches of 57 KB with new
// keys grew its twin to 5 MB, whose merges then timed out and held up the
// other stores' writes.
func TestTwinStateLimit(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	tw, err := OpenTwins(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tw.Close()
	patch := func(key string) []byte { return []byte(`{"` + key + `":"` + strings.Repeat("v", 60000) + `"}`) }
	for i := range 4 { // 240 KB: within the bound
		if _, err := tw.PatchDesired(ctx, "d1", patch(fmt.Sprint("k", i))); err != nil {
			t.Fatalf("desired patch %d: %v", i, err)
		}
		if !tw.RecordReported("d1", patch(fmt.Sprint("k", i))) {
			t.Fatalf("reported patch %d not queued", i)
		}
	}
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before, err := tw.Get(ctx, "d1")
	if err != nil || before.DesiredVersion != 4 || before.ReportedVersion != 4 {
		t.Fatalf("four patches: %d, %d, %v", before.DesiredVersion, before.ReportedVersion, err)
	}
	var inv *InvalidError
	if _, err := tw.PatchDesired(ctx, "d1", patch("k4")); !errors.As(err, &inv) || !strings.Contains(err.Error(), "larger than 262144 bytes") {
		t.Fatalf("a desired patch past the bound: %v", err)
	}
	if !tw.RecordReported("d1", patch("k4")) {
		t.Fatal("reported patch not queued")
	}
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := tw.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if !equalJSON(t, before, after) || after.DesiredVersion != 4 || after.ReportedVersion != 4 {
		t.Fatalf("refused patches changed the twin: versions %d, %d", after.DesiredVersion, after.ReportedVersion)
	}
	if merged, _, rejected := tw.Stats(); merged != 4 || rejected != 1 {
		t.Fatalf("merged %d, rejected %d; want 4, 1", merged, rejected)
	}

	// A state stored past the bound takes patches that leave it no longer
	// (a value replaced by one as long, a key removed), not one that grows it.
	if _, err := db.W.ExecContext(ctx, `UPDATE twins SET reported = json_patch(reported, ?) WHERE device_id = 'd1'`,
		string(patch("k9"))); err != nil {
		t.Fatal(err)
	}
	tw.RecordReported("d1", []byte(`{"k0":"`+strings.Repeat("w", 60000)+`"}`))
	tw.RecordReported("d1", []byte(`{"k10":1}`))
	tw.RecordReported("d1", []byte(`{"k9":null,"k1":null}`))
	tw.RecordReported("d1", []byte(`{"k10":1}`))
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := tw.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if got.ReportedVersion != 7 || got.Reported["k9"] != nil || got.Reported["k10"] != 1.0 ||
		!strings.HasPrefix(got.Reported["k0"].(string), "w") {
		t.Fatalf("over the bound: version %d, k9 %v, k10 %v", got.ReportedVersion, got.Reported["k9"] != nil, got.Reported["k10"])
	}
	if merged, _, rejected := tw.Stats(); merged != 7 || rejected != 2 {
		t.Fatalf("merged %d, rejected %d; want 7, 2", merged, rejected)
	}
}
