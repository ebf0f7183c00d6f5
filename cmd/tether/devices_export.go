package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
)

// devicesExport is `tether devices export ID [--out FILE]`: everything the
// server stores about a device, its secret excepted, as one JSON document
// (GET /api/v1/devices/{id}/export, admin only), copied as it streams in.
func devicesExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices export", deviceSynopsis("export"), stderr)
	remote := addRemoteFlags(fs)
	out := fs.String("out", "", "write the document to FILE (mode 0600, replaced only when complete) instead of stdout")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 1, stderr); err != nil {
		return err
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	id := pos[0]
	if *out == "" {
		return c.stream(ctx, "/devices/"+url.PathEscape(id)+"/export", stdout)
	}
	f, err := os.CreateTemp(filepath.Dir(*out), "."+filepath.Base(*out)+".*")
	if err != nil {
		return fmt.Errorf("export %s: %w", id, err)
	}
	defer os.Remove(f.Name()) // after a successful rename, a no-op
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("export %s: %w", id, err)
	}
	if err := c.stream(ctx, "/devices/"+url.PathEscape(id)+"/export", f); err != nil {
		f.Close()
		return fmt.Errorf("export %s: %w", id, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("export %s: %w", id, err)
	}
	if err := os.Rename(f.Name(), *out); err != nil {
		return fmt.Errorf("export %s: %w", id, err)
	}
	fmt.Fprintf(stderr, "exported %s to %s\n", id, *out)
	return nil
}

// stream copies the JSON answer of GET path to w as it arrives, with no
// time limit but ctx's (an export may be large). An answer cut short (the
// server's document ends with "]}") is an error.
func (c *serverClient) stream(ctx context.Context, path string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	hc := *c.http
	hc.Timeout = 0
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer res.Body.Close()
	if res.StatusCode >= 400 {
		return readError(res)
	}
	tail := &tailWriter{}
	if _, err := io.Copy(io.MultiWriter(w, tail), res.Body); err != nil {
		return fmt.Errorf("GET %s: the answer was cut short: %w", path, err)
	}
	if !bytes.HasSuffix(bytes.TrimSpace(tail.b), []byte("]}")) {
		return fmt.Errorf("GET %s: the answer was cut short (the document is incomplete)", path)
	}
	return nil
}

// tailWriter keeps the last bytes written to it.
type tailWriter struct{ b []byte }

func (t *tailWriter) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 16 {
		t.b = append(t.b[:0], t.b[len(t.b)-16:]...)
	}
	return len(p), nil
}
