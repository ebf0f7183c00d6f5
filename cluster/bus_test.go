package cluster

import (
	"strings"
	"testing"
)

// TestRedacted: the log never shows an external NATS's password.
func TestRedacted(t *testing.T) {
	got := redacted("nats://tether:s3cret-pass@n1:4222, tls://n2:4222")
	if strings.Contains(got, "s3cret-pass") || !strings.Contains(got, "n1:4222") || !strings.Contains(got, "tls://n2:4222") {
		t.Fatalf("redacted: %s", got)
	}
}
