package database

import (
	"strings"
	"testing"
)

func TestRebind(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`SELECT 1`, `SELECT 1`},
		{`SELECT * FROM t WHERE a = ? AND b = ?`, `SELECT * FROM t WHERE a = $1 AND b = $2`},
		{`VALUES (?1, json_patch('{}', ?2), 1, ?3) ON CONFLICT DO UPDATE SET d = json_patch(d, ?2)`,
			`VALUES ($1, json_patch('{}', $2), 1, $3) ON CONFLICT DO UPDATE SET d = json_patch(d, $2)`},
		{`SELECT ?2, ?`, `SELECT $2, $3`},
		{`SELECT '?', "a?b", ? -- why?` + "\n" + `, /* ? */ ?`, `SELECT '?', "a?b", $1 -- why?` + "\n" + `, /* ? */ $2`},
		{`SELECT 'it''s ?', ?`, `SELECT 'it''s ?', $1`},
		{`CREATE FUNCTION f() AS $$ SELECT '?' ? $$; SELECT ?`, `CREATE FUNCTION f() AS $$ SELECT '?' ? $$; SELECT $1`},
		{`AS $body$ ? $x$ ? $body$, ?`, `AS $body$ ? $x$ ? $body$, $1`},
		{`SELECT a$b, ?`, `SELECT a$b, $1`},
		{`SELECT $1, ?`, `SELECT $1, $1`},
		{`SELECT 'open ?`, `SELECT 'open ?`},
		{`SELECT ?0`, `SELECT ?0`},
		{`?`, `$1`},
	} {
		if got := Rebind(tc.in); got != tc.want {
			t.Errorf("Rebind(%q)\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

// FuzzRebind: Rebind never panics, leaves a query without ? as it is, is
// idempotent on SQLite's SQL, and only ever replaces question marks.
func FuzzRebind(f *testing.F) {
	for _, s := range []string{`SELECT ?`, `'?' ?1 "?" ?`, `$$?$$ ?`, `-- ?` + "\n?", `/* ? */ ?`, `$a$ ? $a$`, `?99999999999999999999`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		got := Rebind(q)
		if !strings.Contains(q, "?") && got != q {
			t.Fatalf("changed a query without placeholders: %q -> %q", q, got)
		}
		// Idempotent where no dollar quote can start ($1$$ is not one).
		if again := Rebind(got); !strings.Contains(q, "$") && again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q", q, got, again)
		}
		// Removing the placeholders from both leaves the same text.
		strip := func(s string, mark byte) string {
			var b strings.Builder
			for i := 0; i < len(s); i++ {
				if s[i] == mark {
					for i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
						i++
					}
					continue
				}
				b.WriteByte(s[i])
			}
			return b.String()
		}
		if a, b := strip(strip(q, '?'), '$'), strip(strip(got, '?'), '$'); a != b {
			t.Fatalf("changed more than placeholders: %q -> %q", q, got)
		}
	})
}
