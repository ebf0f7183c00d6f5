package broker

import (
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/internal/addrkey"
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
// closed; it reports whether the credentials may be checked now, and if
// so end is to be called once the attempt's outcome is recorded (Failed
// or Succeeded). A login as anything but a device (a person's password, a
// token, a name nobody has) is an attempt the limiter counts while it is
// checked (LoginLimiter.Begin, asked again after each hold): a burst of
// concurrent guesses has only the key's free failures checked, the rest
// wait for those and are then held as guesses one after the other would
// be. A device's secret (256 bits, checked from memory in microseconds)
// is not guessed: its login is only held while its key is closed, and a
// fleet behind one address reconnects at once.
func (a *Auth) holdLogin(cl *mqtt.Client, user string) (ok bool, end func()) {
	addr := addrkey.Host(cl.Net.Remote)
	if a.reg.HasDevice(user) {
		w := a.login.Wait(user, addr)
		if w == 0 {
			return true, func() {}
		}
		a.m.delayed.Inc()
		return a.sleep(min(w, a.hold)) && w <= a.hold, func() {}
	}
	for hold := a.hold; ; {
		w, err := a.login.Begin(a.stopCtx, user, addr)
		switch {
		case err != nil:
			return false, nil // the broker stops
		case w == 0:
			return true, func() { a.login.End(user, addr) }
		case hold == a.hold:
			a.m.delayed.Inc()
		}
		if !a.sleep(min(w, hold)) || w > hold {
			return false, nil // closed longer than the hold: refused after it
		}
		hold -= w
	}
}

// sleep waits d; false if the hook stops meanwhile.
func (a *Auth) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-a.stop:
		return false
	}
}

// failed feeds a refused login to the limiter: wrong credentials, and a
// client id that is not the identity's, are guesses; a CONNECT without a
// password guesses nothing, and one refused by the limiter itself must
// not close its key further.
func (a *Auth) failed(cl *mqtt.Client, user, reason string) {
	if reason == "bad_credentials" || reason == "client_id" {
		a.login.Failed(user, addrkey.Host(cl.Net.Remote))
	}
}
