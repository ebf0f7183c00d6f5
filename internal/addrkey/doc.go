// Package addrkey is the one rule by which per-address policies key a
// client's address: connection limits, the login throttle, bans, the
// audit log's bound on refused logins. An IPv4 address is its own key;
// an IPv6 client owns a /64 at least (SLAAC hands every host one, and
// privacy addresses change within it at will), so an IPv6 address is
// keyed by its /64 prefix ("2001:db8:1:2::/64"): a limit keyed on the
// full address would be evaded by a new address per connection. An
// IPv4-mapped IPv6 address (::ffff:192.0.2.1) is the IPv4 address.
package addrkey
