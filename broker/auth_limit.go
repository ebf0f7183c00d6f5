package broker

import (
	"net"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// defaultLoginHold is the longest a CONNECT is held because its name and
// address, or its address, failed too often (devices.LoginLimiter;
// AuthOptions.LoginHold). A CONNECT whose key reopens within it is then checked as usual; one whose
// key stays closed longer is refused after it, with 0x9F connection rate
// exceeded (3.1.1: 0x03 server unavailable), without its credentials
// being checked. MQTT has no Retry-After: the hold is what slows a client
// that reconnects at once. It is spent on the connecting client's own
// goroutine and ends when the broker stops.
const defaultLoginHold = 5 * time.Second

// holdLogin waits while the login limiter keeps user's login from cl's address
// closed; it reports whether the credentials may be checked now.
func (a *Auth) holdLogin(cl *mqtt.Client, user string) bool {
	w := a.login.Wait(user, remoteIP(cl.Net.Remote))
	if w == 0 {
		return true
	}
	a.m.delayed.Inc()
	t := time.NewTimer(min(w, a.hold))
	defer t.Stop()
	select {
	case <-t.C:
	case <-a.stop:
		return false
	}
	return w <= a.hold
}

// failed feeds a refused login to the limiter: wrong credentials, and a
// client id that is not the identity's, are guesses; a CONNECT without a
// password guesses nothing, and one refused by the limiter itself must
// not close its key further.
func (a *Auth) failed(cl *mqtt.Client, user, reason string) {
	if reason == "bad_credentials" || reason == "client_id" {
		a.login.Failed(user, remoteIP(cl.Net.Remote))
	}
}

// remoteIP is the address part of host:port.
func remoteIP(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}
