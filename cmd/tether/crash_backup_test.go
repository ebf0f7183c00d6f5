package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// crashBackup takes a backup with the binary while the server runs under
// load, checks that a second backup to the same file is refused, restores
// the copy into a fresh data directory as the README says, and finds the
// retained message written before the backup.
func crashBackup(t *testing.T, bin string) {
	p := newTetherProc(t, bin)
	p.start(t)
	pub := crashPub3(t, p.mqtt, "backup-pub")
	if tok := pub.Publish("backup/kept", 1, true, "before-backup"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var acked payloadSet
	wg.Add(1)
	go func() {
		defer wg.Done()
		publishAcked(pub, "backup/load", "b", 1<<30, 16, &acked, stop)
	}()
	defer func() {
		close(stop)
		wg.Wait()
		pub.Disconnect(0)
	}()

	file := filepath.Join(t.TempDir(), "tether-backup.db")
	run := func() (string, error) {
		var out bytes.Buffer
		cmd := execTether(bin, "backup", "--data-dir", filepath.Join(p.dir, "data"), file)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	if out, err := run(); err != nil {
		t.Fatalf("tether backup: %v\n%s", err, out)
	}
	integrityCheck(t, file)
	integrityCheck(t, file+".sessions")
	out, err := run()
	if err == nil || !strings.Contains(out, "refusing to overwrite") {
		t.Fatalf("second backup to the same file: err %v, output %q", err, out)
	}

	// Restore into a new data directory and start a server on it.
	r := newTetherProc(t, bin)
	if err := os.MkdirAll(filepath.Join(r.dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	for from, to := range map[string]string{file: r.dbPath(), file + ".sessions": r.sessionsPath()} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r.start(t)
	var got payloadSet
	c := crashSub3(t, r.mqtt, "backup-reader", &got)
	defer c.Disconnect(0)
	if tok := c.Subscribe("backup/kept", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	checkFor(t, 5*time.Second, func() error {
		if got.len() != 1 {
			return fmt.Errorf("retained message not in the restored database")
		}
		return nil
	})
	r.stop(t)
}
