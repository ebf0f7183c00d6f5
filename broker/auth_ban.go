package broker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/addrkey"
)

// isBanned reports whether a CONNECT as user from cl's address is refused
// by a ban (devices.Bans): the address's (a connection that arrived just
// before the ban; later ones are closed at accept by the listeners'
// Limiter) or user's at that address.
func (a *Auth) isBanned(cl *mqtt.Client, user string) bool {
	_, banned := a.bans.Banned(user, addrkey.Host(cl.Net.Remote))
	return banned
}

// aclRefused counts an ACL denial of a connected client's own doing (a
// publish, or a filter of the SUBSCRIBE it is sending) towards a ban of
// its identity at its address. A refused delivery (an auth rule can deny
// a topic within a subscription that was granted, and an offline
// session's owner may have changed) is nobody's doing and is not counted;
// nor is anything a connection being revoked does.
func (a *Auth) aclRefused(cl *mqtt.Client, action, topic string) {
	if a.bans == nil || cl.Net.Inline {
		return
	}
	if _, _, ok := a.subscribeFilter(cl, topic); action == "subscribe" && !ok {
		return
	}
	c := a.conn(cl)
	if c == nil || c.revoked {
		return
	}
	a.bans.Refused(devices.Refusal{Kind: "acl", Address: addrkey.Host(cl.Net.Remote), Identity: c.id.Name,
		Detail: action + " " + topic})
}

// endBanned disconnects the clients a new ban covers: every client from a
// banned address (an IPv6 ban: from its /64), or the banned identity's
// clients from its address. MQTT
// 5 clients get DISCONNECT 0x98 administrative action (0x8A banned is a
// CONNACK code only); their next CONNECT is refused. Bans.OnBan calls it
// on a goroutine of its own.
func (a *Auth) endBanned(ban devices.Ban) {
	if !a.working() {
		return
	}
	defer a.wg.Done()
	var ts []target
	a.clients.Range(func(k, v any) bool {
		cl, c := k.(*mqtt.Client), v.(*conn)
		if c.revoked || addrkey.Of(cl.Net.Remote) != ban.Address || (ban.Identity != "" && c.id.Name != ban.Identity) {
			return true
		}
		ts = append(ts, target{cl, c})
		return true
	})
	a.cutAll(ts, packets.ErrAdministrativeAction, func(t target) {
		a.log.Info("disconnecting banned client", "client", t.cl.ID, "name", t.c.id.Name, "remote", ban.Address, "ban", ban.Key)
	})
}
