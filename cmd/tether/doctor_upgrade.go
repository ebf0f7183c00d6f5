package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"unicode"

	"github.com/coder/websocket"

	"github.com/tether-iot/tether/listeners"
)

// upgrade is the HTTP step of ws:// and wss://: the WebSocket handshake
// over conn (already past TLS for wss), with the subprotocol MQTT requires.
// A refusal is explained from its status, headers and body.
func (d *doctor) upgrade(ctx context.Context, conn net.Conn, secure bool) (net.Conn, error) {
	scheme := "ws"
	if secure {
		scheme = "wss"
	}
	u := scheme + "://" + d.ep.Host + d.ep.Path
	once := &oneConn{conn: conn}
	tr := &http.Transport{
		DialContext:       once.dial,
		DialTLSContext:    once.dial, // conn is already past the TLS handshake
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	hdr := http.Header{}
	if d.opts.origin != "" {
		hdr.Set("Origin", d.opts.origin)
	}
	sent := "no Origin header"
	if d.opts.origin != "" {
		sent = "Origin " + d.opts.origin
	}
	hctx, cancel := context.WithTimeout(ctx, d.opts.timeout)
	defer cancel()
	c, resp, err := websocket.Dial(hctx, u, &websocket.DialOptions{
		HTTPClient: client, HTTPHeader: hdr, Subprotocols: []string{listeners.Subprotocol},
	})
	if err != nil {
		if resp == nil {
			if f := d.clientCertificateWanted(err); f != nil {
				return nil, f
			}
			return nil, upgradeTransportFailure(err, secure)
		}
		return nil, d.upgradeRefused(resp, sent)
	}
	if c.Subprotocol() != listeners.Subprotocol {
		c.CloseNow()
		return nil, &stepFailure{step: "HTTP",
			why: fmt.Sprintf("the server upgraded to WebSocket without the subprotocol %q (it chose %q)", listeners.Subprotocol, c.Subprotocol()),
			fix: "MQTT over WebSocket needs the subprotocol \"mqtt\" [MQTT-6.0.0-3]: this endpoint is not an MQTT broker's, or a proxy strips Sec-WebSocket-Protocol"}
	}
	d.line("ok", "HTTP", fmt.Sprintf("GET %s upgraded: %d %s, subprotocol %q (sent %s)",
		d.ep.Path, resp.StatusCode, http.StatusText(resp.StatusCode), c.Subprotocol(), sent))
	// The connection outlives ctx's deadline: it carries MQTT next.
	return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
}

// upgradeRefused explains a handshake answered with something else than 101.
func (d *doctor) upgradeRefused(resp *http.Response, sent string) *stepFailure {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	resp.Body.Close()
	f := &stepFailure{step: "HTTP"}
	for _, h := range []string{"Content-Type", "Location", "Sec-WebSocket-Protocol", "Upgrade", "Retry-After", "Server", "Www-Authenticate"} {
		if v := resp.Header.Get(h); v != "" {
			f.details = append(f.details, fmt.Sprintf("%s: %s", h, printable(v)))
		}
	}
	if text := printable(string(body)); text != "" {
		f.details = append(f.details, "the server said: "+text)
	}
	f.why = fmt.Sprintf("the server refused the WebSocket upgrade of %s with %s (sent %s)", d.ep.Path, resp.Status, sent)
	switch code := resp.StatusCode; {
	case code == http.StatusForbidden && d.opts.origin != "":
		f.why = fmt.Sprintf("the server refused the Origin %s (403): WebSocket connections from pages of that origin are not allowed", d.opts.origin)
		f.fix = "on the broker, add the origin's host to http.allowed_origins (TETHER_HTTP_ALLOWED_ORIGINS), or open the page from the broker's own address"
	case code == http.StatusForbidden:
		f.fix = "a proxy or the server forbids this request: check the proxy's access rules and the server's log"
	case code == http.StatusNotFound:
		f.fix = "there is no WebSocket endpoint at " + d.ep.Path + ": Tether serves MQTT over WebSocket at /mqtt (ws://HOST:8080/mqtt); check the path, and a proxy's location block"
	case code == http.StatusUpgradeRequired:
		f.fix = "the server saw a plain HTTP request: a proxy in between drops the Upgrade and Connection headers; pass them on (nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\")"
	case code == http.StatusBadRequest:
		f.fix = "the server did not accept the handshake as sent; its answer above says why (e.g. the subprotocol \"mqtt\" is required)"
	case code >= 300 && code < 400:
		f.fix = "the server redirects to " + resp.Header.Get("Location") + ": connect there (wss:// when it points to https://)"
	case code == http.StatusUnauthorized:
		f.fix = "something in front of the broker asks for HTTP authentication: MQTT clients authenticate in CONNECT; let /mqtt through without it"
	case code == http.StatusTooManyRequests:
		f.fix = "too many connections or attempts from this address: wait, or raise the broker's connection limits"
	case code == http.StatusServiceUnavailable:
		f.fix = "the broker is shutting down or not ready (a proxy: no backend is up); try again when it runs"
	case code == http.StatusBadGateway || code == http.StatusGatewayTimeout:
		f.fix = "a proxy could not reach the broker behind it: check that the broker runs and the proxy's upstream address"
	case code == http.StatusOK:
		f.fix = "the server answered with a page, not an upgrade: this address is not a WebSocket endpoint (Tether's is /mqtt), or a proxy in between does not pass WebSocket upgrades"
	default:
		f.fix = "see the server's answer above"
	}
	return f
}

// upgradeTransportFailure explains a handshake that got no HTTP answer.
func upgradeTransportFailure(err error, secure bool) *stepFailure {
	f := &stepFailure{step: "HTTP", why: "the WebSocket handshake failed: " + err.Error()}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "malformed HTTP"):
		f.why = "the port did not answer in HTTP"
		f.fix = "this looks like an MQTT port, not an HTTP one: use tcp:// (tls:// if it is encrypted) for it, or the broker's HTTP port (Tether: 8080 for ws, 8443 for wss)"
		if secure {
			f.fix = "this looks like an MQTT over TLS port: use tls:// for it, or the broker's HTTPS port (Tether: 8443)"
		}
	case errors.Is(err, io.EOF) || strings.Contains(msg, "EOF") || strings.Contains(msg, "connection reset"):
		f.why = "the server closed the connection without an HTTP answer"
		f.fix = "the port may not speak HTTP (an MQTT port? use tcp:// or tls://), or the server refused the connection (connection limits)"
	case isTimeout(err):
		f.why = "the server sent no HTTP answer in time"
		f.fix = "the port may not speak HTTP: an MQTT port waits for CONNECT; use tcp:// or tls:// for it"
	}
	return f
}

// printable keeps the first line-ish of a server's text safe to print.
func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == '\t' {
			return ' '
		}
		if !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// oneConn hands out one existing connection to an http.Transport.
type oneConn struct {
	mu   sync.Mutex
	conn net.Conn
}

func (o *oneConn) dial(context.Context, string, string) (net.Conn, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.conn == nil {
		return nil, errors.New("doctor: one connection per run")
	}
	c := o.conn
	o.conn = nil
	return c, nil
}
