// Package forwarded decides what an HTTP request's trusted proxies may
// say about it, once for every path (MQTT over WebSocket, the HTTP API,
// the connection limits and bans): clientaddr.go resolves a client's
// address behind trusted proxies (X-Forwarded-For, RFC 7239 Forwarded)
// and holds the one CIDR parser of http.trusted_proxies,
// mqtt.proxy_protocol_from and security.ban_exempt; origin.go is the
// /mqtt origin policy (forwarding headers, http.public_url, DNS
// rebinding).
//
// It imports neither the MQTT engine nor the configuration, so the
// dashboard and the configuration's validation use it without either.
package forwarded
