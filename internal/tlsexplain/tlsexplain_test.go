package tlsexplain

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
)

// TestClientCertificateWanted: only the alerts that mean "no client
// certificate" are read so; "handshake failure" also ends a handshake
// with no common cipher, so it keeps the general explanation that names
// both causes.
func TestClientCertificateWanted(t *testing.T) {
	remote := func(a tls.AlertError) error { return &net.OpError{Op: "remote error", Err: a} }
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{remote(116), true}, // certificate required
		{remote(42), true},  // bad certificate
		{remote(40), false}, // handshake failure
		{&net.OpError{Op: "local error", Err: tls.AlertError(116)}, false},
	} {
		if got := ClientCertificateWanted(tc.err); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.want)
		}
	}
	f := Handshake(remote(40), Context{Transport: "tls"})
	if !strings.Contains(f.Why, "handshake failure") || !strings.Contains(f.Fix, "client certificate") || !strings.Contains(f.Fix, "cipher") {
		t.Errorf("handshake failure: %q", f.Error())
	}
}
