package dashboard

import (
	"encoding/base64"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// runUIModule runs script under Node as an ES module with util.js's
// exports in scope as util, and returns what it prints. It skips when
// Node is missing, except in CI.
func runUIModule(t *testing.T, script string) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("node is required in CI: %v", err)
		}
		t.Skipf("node not available: %v", err)
	}
	src, err := web.ReadFile("web/js/util.js")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, "--input-type=module")
	cmd.Stdin = strings.NewReader("const util = await import('data:text/javascript;base64," +
		base64.StdEncoding.EncodeToString(src) + "');\n" + script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	return string(out)
}

// TestUIPrettyDeep: the dashboard shows a document nested 10,000 deep (a
// device's command result stored before the server bounded it) as a note
// instead of overflowing the stack, which left the device page's command
// history empty; shallow documents are shown as indented JSON.
func TestUIPrettyDeep(t *testing.T) {
	out := runUIModule(t, `
let deep = 1;
for (let i = 0; i < 10000; i++) deep = [deep];
let ok = 1;
for (let i = 0; i < 63; i++) ok = [ok];
const r = (f) => { try { return f(); } catch (e) { return 'threw ' + e.name; } };
console.log(JSON.stringify([r(() => util.pretty({a: deep})), r(() => util.pretty({x: 1})),
  r(() => util.pretty(null)), r(() => util.pretty({a: ok}) === JSON.stringify({a: ok}, null, 2))]));
`)
	want := `["(nested deeper than 64 levels: not shown; the API returns it)","{\n  \"x\": 1\n}","{}",true]`
	if got := strings.TrimSpace(out); got != want {
		t.Fatalf("pretty:\n got %s\nwant %s", got, want)
	}
}
