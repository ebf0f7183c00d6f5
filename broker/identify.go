package broker

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/devices"
)

// identifier says which device, if any, a client authenticated as
// (Auth.Identity, set with SetIdentify): the hooks that act for a device
// (its history, its command responses) ask it rather than trusting the
// client id a client chose.
type identifier struct {
	f atomic.Pointer[func(*mqtt.Client) (devices.Identity, bool)]
}

// SetIdentify tells the hook who a client is (Auth.Identity).
func (d *identifier) SetIdentify(f func(*mqtt.Client) (devices.Identity, bool)) { d.f.Store(&f) }

// device returns the id of the device cl authenticated as, or "". Without
// SetIdentify (a broker without the access hook: everyone is trusted),
// a client's id is taken as its device's.
func (d *identifier) device(cl *mqtt.Client) string {
	f := d.f.Load()
	if f == nil {
		return cl.ID
	}
	if who, known := (*f)(cl); known && who.Kind == devices.KindDevice {
		return who.Name
	}
	return ""
}
