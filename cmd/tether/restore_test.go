package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBackupRestoreRoundTrip, with the real binary: a backup taken while
// the server runs; restore refused while it runs (the data directory's
// lock); after it stops, restore brings back the state of the backup and
// keeps the replaced database; the restarted server serves it.
func TestBackupRestoreRoundTrip(t *testing.T) {
	bin := tetherBinary(t)
	p := newTetherProc(t, bin, "TETHER_ADMIN_PASSWORD="+simAdminPassword)
	p.start(t)
	api := loginURL(t, "http://"+p.http, "admin", simAdminPassword)
	register := func(id string) {
		if code := api.do(t, "POST", "/devices", map[string]string{"id": id, "name": id}, nil); code != http.StatusCreated && code != http.StatusOK {
			t.Fatalf("register %s: %d", id, code)
		}
	}
	register("kept-1")
	dataDir := filepath.Join(p.dir, "data")
	file := filepath.Join(t.TempDir(), "tether-backup.db")
	tetherRun := func(args ...string) (string, error) {
		out, err := execTether(bin, args...).CombinedOutput()
		return string(out), err
	}
	if out, err := tetherRun("backup", "--data-dir", dataDir, file); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	register("after-backup")

	out, err := tetherRun("restore", "--data-dir", dataDir, file)
	abs, _ := filepath.Abs(dataDir)
	if err == nil || !strings.Contains(out, "refusing to replace a live database") || !strings.Contains(out, abs) {
		t.Fatalf("restore while the server runs: %v\n%s", err, out)
	}
	if got := deviceIDs(t, api); !got["kept-1"] || !got["after-backup"] {
		t.Fatalf("devices after a refused restore: %v", got)
	}

	notDB := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(notDB, []byte("not a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.stop(t)
	if out, err := tetherRun("restore", "--data-dir", dataDir, notDB); err == nil || !strings.Contains(out, "not an intact SQLite database") {
		t.Fatalf("restore of a text file: %v\n%s", err, out)
	}
	out, err = tetherRun("restore", "--data-dir", dataDir, file)
	if err != nil || !strings.Contains(out, "restored") || !strings.Contains(out, "kept as") {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	kept, _ := filepath.Glob(filepath.Join(dataDir, "tether.db.before-restore-*"))
	if len(kept) == 0 {
		t.Fatalf("the replaced database was not kept")
	}
	if st, err := os.Stat(p.dbPath()); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("restored database: %v, %v", st, err)
	}

	p.start(t)
	defer p.stop(t)
	api = loginURL(t, "http://"+p.http, "admin", simAdminPassword)
	if got := deviceIDs(t, api); !got["kept-1"] || got["after-backup"] {
		t.Fatalf("devices after restore: %v, want kept-1 only", got)
	}
}

// loginURL logs in to the server at base.
func loginURL(t *testing.T, base, user, password string) *apiSession {
	t.Helper()
	s := &apiSession{base: base, client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(s.client.CloseIdleConnections)
	var out struct {
		Token string `json:"token"`
	}
	if code := s.do(t, "POST", "/auth/login", map[string]string{"username": user, "password": password}, &out); code != http.StatusOK {
		t.Fatalf("login as %s: %d", user, code)
	}
	s.token = out.Token
	return s
}

func deviceIDs(t *testing.T, api *apiSession) map[string]bool {
	t.Helper()
	var out struct {
		Devices []struct {
			ID string `json:"id"`
		} `json:"devices"`
	}
	if code := api.do(t, "GET", "/devices?limit=1000", nil, &out); code != http.StatusOK {
		t.Fatalf("GET /devices: %d", code)
	}
	got := map[string]bool{}
	for _, d := range out.Devices {
		got[d.ID] = true
	}
	return got
}
