package simulator

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestExplainClosed: a connect the broker closed before its CONNACK names
// limits.max_pending_connections_per_ip and how to raise it, and says when
// --connect-concurrency is above its default; other errors pass as they
// are.
func TestExplainClosed(t *testing.T) {
	reset := fmt.Errorf("network Error : %w", &net.OpError{Op: "read", Net: "tcp",
		Err: os.NewSyscallError("read", syscall.ECONNRESET)})
	err := explainClosed(reset, 2000)
	for _, want := range []string{"connection reset by peer", "limits.max_pending_connections_per_ip",
		"TETHER_LIMITS_MAX_PENDING_CONNECTIONS_PER_IP", "--connect-concurrency 2000 is above", "(default 1024"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v: does not say %q", err, want)
		}
	}
	if !errors.Is(err, errClosedEarly) {
		t.Error("not errClosedEarly")
	}
	if err := explainClosed(fmt.Errorf("x: %w", io.EOF), 64); strings.Contains(err.Error(), "is above") ||
		!strings.Contains(err.Error(), "lower --connect-concurrency (now 64)") {
		t.Errorf("EOF at 64: %v", err)
	}
	for _, e := range []error{nil, errors.New("not authorized"), fmt.Errorf("tls handshake with x: %w", io.EOF)} {
		if got := explainClosed(e, 2000); got != e {
			t.Errorf("explainClosed(%v) = %v", e, got)
		}
	}
}
