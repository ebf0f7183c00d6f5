// Package listeners holds Tether's network listeners for the mochi-mqtt
// engine: MQTT over TCP and TLS (tcp.go) and MQTT over WebSocket and secure
// WebSocket (websocket.go, written on github.com/coder/websocket rather
// than mochi's gorilla listener; wsconn.go is the MQTT byte stream of a
// WebSocket connection as the engine reads and writes it).
//
// The engine writes each acknowledgement as it handles the packet that
// called for it; acks.go holds those of a burst and sends them in one
// write when the engine reads next.
//
// Every listener tracks the connections it hands to the engine (conns.go),
// so that shutdown can stop accepting, then close what is left, before the
// engine's own Close runs; counts bytes per transport; bounds the time a
// client may take to send CONNECT; enforces the maximum MQTT packet size
// on the byte stream (packetsize.go), telling MQTT 5 clients why with
// DISCONNECT 0x95; refuses the packets the engine's decoder would panic
// on, which would end the process (guard.go); and sends nothing after a
// DISCONNECT.
//
// Who a client is and which pages may connect are decided once for every
// path, in the package forwarded (client addresses behind trusted
// proxies, the /mqtt origin policy); here proxyproto.go reads the PROXY
// protocol from trusted load balancers on the TCP and TLS listeners,
// handshake.go counts and logs refused upgrades, and certificate.go
// reloads the TLS certificate for new connections without a restart.
//
// Listener ids are the transport names "tcp", "tls", "ws" and "wss": the
// engine reports a client's listener id, and that is its transport.
package listeners
