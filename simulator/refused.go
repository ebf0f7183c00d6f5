package simulator

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
)

// defaultPendingLimit is Tether's limits.max_pending_connections_per_ip
// at its defaults: connections from one address waiting for their
// CONNACK.
const defaultPendingLimit = 1024

// explainClosed explains a connect that failed because the broker closed
// the connection before its CONNACK (EOF, reset, broken pipe): Tether
// does that at accept for its connection limits, most often, for a load
// generator on one address, limits.max_pending_connections_per_ip, which
// a --connect-concurrency above its default meets. The explanation names
// the limit, how to raise it and how to stay under it, without the
// connection's ports (one kind for errorKinds). Other errors, and a TLS
// handshake's (tlsexplain explains those), are returned as they are.
func explainClosed(err error, concurrency int) error {
	if err == nil || strings.Contains(err.Error(), "tls handshake") {
		return err
	}
	var how string
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		how = "connection reset by peer"
	case errors.Is(err, syscall.EPIPE):
		how = "broken pipe"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		how = "EOF"
	default:
		return err
	}
	above := ""
	if concurrency > defaultPendingLimit {
		above = fmt.Sprintf(", which --connect-concurrency %d is above", concurrency)
	}
	return fmt.Errorf("the broker closed the connection before its CONNACK (%s): a Tether broker does so at accept "+
		"when one address has more connections waiting for their CONNACK than limits.max_pending_connections_per_ip "+
		"(default %d%s): lower --connect-concurrency (now %d), or raise the limit on the broker "+
		"(limits.max_pending_connections_per_ip in its configuration, or TETHER_LIMITS_MAX_PENDING_CONNECTIONS_PER_IP; 0 = unlimited); "+
		"limits.max_connections, max_connections_per_ip, connection_rate_per_ip and bans close connections the same way: "+
		"the broker's tether_connections_limited_total{limit} says which: %w",
		how, defaultPendingLimit, above, concurrency, errClosedEarly)
}

// errClosedEarly is the error explainClosed wraps.
var errClosedEarly = errors.New("connection closed before CONNACK")
