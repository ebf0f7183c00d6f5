package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tether-iot/tether/simulator"
)

// runDoctor connects to a broker step by step (SPEC §8: `tether doctor
// URL`) and says in plain words which step failed, why, and what to
// change: DNS, TCP, TLS (tls and wss), the HTTP upgrade (ws and wss), then
// MQTT CONNECT and its CONNACK. The report goes to stdout; a failed step
// makes the command exit non-zero.
func runDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("doctor", "doctor URL [--username U --password P] [--cafile FILE] [--insecure]\n\n"+
		"Connects to an MQTT broker over tcp://, tls:// (mqtts://), ws:// or wss:// step by step\n"+
		"(DNS, TCP, TLS, HTTP upgrade, MQTT CONNECT) and says which step fails, why, and what\n"+
		"to change. Exits 1 when a step fails.\n\n"+
		"Connecting as a device takes over that device's connection if it is online.\n\n"+
		"Examples:\n"+
		"  tether doctor tcp://127.0.0.1:1883 --username sensor-1 --password SECRET\n"+
		"  tether doctor wss://broker.example.com/mqtt --cafile cert.pem", stderr)
	var o doctorOptions
	fs.StringVar(&o.username, "username", "", "MQTT user name: a device id, a user name, or empty for anonymous")
	fs.StringVar(&o.password, "password", "", "MQTT password: the device secret, the user's password or an API token")
	fs.StringVar(&o.clientID, "client-id", "", "MQTT client id (default: the --username, else tether-doctor-PID)")
	fs.StringVar(&o.cafile, "cafile", "", "PEM file of the CA (or self-signed certificate) to trust for tls:// and wss://")
	fs.BoolVar(&o.insecure, "insecure", false, "go on when the broker's certificate does not verify (development only)")
	fs.StringVar(&o.origin, "origin", "", "Origin header to send on ws:// and wss:// (default none, as MQTT clients outside a browser; a browser sends its page's origin)")
	fs.StringVar(&o.version, "mqtt-version", "5", "MQTT protocol version: 5 or 3.1.1")
	timeout := durationFlag(fs, "timeout", 10*time.Second, "time allowed for each step")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	o.timeout = *timeout
	if err := wantArgs(fs, pos, 1, stderr); err != nil {
		return err
	}
	switch o.version {
	case "5", "5.0":
		o.protocol = 5
	case "3.1.1", "4":
		o.protocol = 4
	default:
		return fmt.Errorf("--mqtt-version %q: want 5 or 3.1.1", o.version)
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %v: want a positive duration", o.timeout)
	}
	if o.clientID == "" {
		o.clientID = o.username // a device's client id is its id (SPEC §5)
	}
	if o.clientID == "" {
		o.clientID = fmt.Sprintf("tether-doctor-%d", os.Getpid())
	}
	if o.cafile != "" {
		if o.caPool, err = loadCAFile(o.cafile); err != nil {
			return err
		}
	}
	ep, err := simulator.ParseEndpoint(pos[0], "", "")
	if err != nil {
		return fmt.Errorf("%w\nwrite the URL as tcp://HOST:1883, tls://HOST:8883, ws://HOST:8080/mqtt or wss://HOST:8443/mqtt", err)
	}
	d := &doctor{opts: o, ep: ep, out: stdout}
	return d.run(ctx)
}

// doctorOptions are the flags of `tether doctor`.
type doctorOptions struct {
	username, password, clientID string
	cafile                       string
	insecure                     bool
	origin                       string
	version                      string
	protocol                     byte // 4 (3.1.1) or 5
	timeout                      time.Duration
	caPool                       *caFile
}

// doctor runs the steps against one endpoint and writes the report.
type doctor struct {
	opts doctorOptions
	ep   simulator.Endpoint
	out  io.Writer
}

// stepFailure is a failed step: what went wrong and what to change.
type stepFailure struct {
	step, why, fix string
	details        []string // what the server said, printed under why
	silent         bool     // the server closed the connection without a word
	cause          error    // the error that ended the step, if any
}

func (f *stepFailure) Error() string { return f.step + " failed: " + f.why }

// transportNames says what each transport is, for the report's first line.
var transportNames = map[string]string{
	simulator.TransportTCP: "MQTT over TCP",
	simulator.TransportTLS: "MQTT over TLS",
	simulator.TransportWS:  "MQTT over WebSocket",
	simulator.TransportWSS: "MQTT over secure WebSocket",
}

func (d *doctor) run(ctx context.Context) error {
	fmt.Fprintf(d.out, "tether doctor: %s://%s%s (%s)\n", d.ep.Transport, d.ep.Host, d.ep.Path, transportNames[d.ep.Transport])
	conn, err := d.connect(ctx)
	if err != nil {
		return d.failed(err)
	}
	defer conn.Close()
	if err := d.mqttConnect(conn, d.ep.Transport); err != nil {
		return d.failed(err)
	}
	fmt.Fprintln(d.out, "result: the broker accepted the connection; every step passed")
	return nil
}

// connect runs the steps below MQTT and returns the connection MQTT
// packets go over.
func (d *doctor) connect(ctx context.Context) (net.Conn, error) {
	addrs, err := d.resolve(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := d.dial(ctx, addrs)
	if err != nil {
		return nil, err
	}
	secure := d.ep.Transport == simulator.TransportTLS || d.ep.Transport == simulator.TransportWSS
	if secure {
		tc, err := d.handshake(conn)
		if err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	if d.ep.Transport == simulator.TransportWS || d.ep.Transport == simulator.TransportWSS {
		wc, err := d.upgrade(ctx, conn, secure)
		if err != nil {
			conn.Close()
			return nil, err
		}
		conn = wc
	}
	return conn, nil
}

// failed prints the failure and the steps that did not run, and returns
// the error that makes the command exit non-zero.
func (d *doctor) failed(err error) error {
	var f *stepFailure
	if !errors.As(err, &f) {
		f = &stepFailure{step: "doctor", why: err.Error()}
	}
	d.line("FAIL", f.step, f.why)
	for _, l := range f.details {
		d.detail(l)
	}
	if f.fix != "" {
		d.detail("fix: " + f.fix)
	}
	fmt.Fprintf(d.out, "result: failed at the %s step\n", f.step)
	return f
}

// line prints one step's outcome.
func (d *doctor) line(status, step, msg string) {
	fmt.Fprintf(d.out, "  %-4s  %-7s %s\n", status, step, msg)
}

// detail prints an indented line under a step.
func (d *doctor) detail(msg string) {
	for _, l := range strings.Split(msg, "\n") {
		fmt.Fprintf(d.out, "                %s\n", l)
	}
}

// resolve is the DNS step.
func (d *doctor) resolve(ctx context.Context) ([]string, error) {
	host := d.ep.Hostname()
	if ip := net.ParseIP(host); ip != nil {
		d.line("ok", "DNS", host+" is an IP address: no lookup needed")
		return []string{host}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.timeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		f := &stepFailure{step: "DNS", why: fmt.Sprintf("the name %q does not resolve: %v", host, err),
			fix: "check the spelling of the host name, or use the broker's IP address"}
		var de *net.DNSError
		if errors.As(err, &de) && de.IsTimeout {
			f.why = fmt.Sprintf("no DNS server answered for %q within %v", host, d.opts.timeout)
			f.fix = "check this machine's DNS settings (/etc/resolv.conf) and network, or use the broker's IP address"
		}
		return nil, f
	}
	d.line("ok", "DNS", fmt.Sprintf("%s is %s", host, strings.Join(addrs, ", ")))
	return addrs, nil
}

// dial is the TCP step: the first address that answers wins.
func (d *doctor) dial(ctx context.Context, addrs []string) (net.Conn, error) {
	_, port, _ := net.SplitHostPort(d.ep.Host)
	var errs []string
	var last error
	for _, a := range addrs {
		target := net.JoinHostPort(a, port)
		dctx, cancel := context.WithTimeout(ctx, d.opts.timeout)
		start := time.Now()
		conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", target)
		cancel()
		if err == nil {
			d.line("ok", "TCP", fmt.Sprintf("connected to %s in %s", target, roundDuration(time.Since(start))))
			return conn, nil
		}
		last = err
		errs = append(errs, fmt.Sprintf("%s: %s", target, tcpReason(err)))
	}
	f := &stepFailure{step: "TCP", why: strings.Join(errs, "; ")}
	switch {
	case errors.Is(last, syscall.ECONNREFUSED):
		f.why = fmt.Sprintf("nothing is listening on port %s (%s)", port, f.why)
		f.fix = fmt.Sprintf("start the broker, or correct the port: Tether listens on 1883 (tcp), 8883 (tls), 8080 (ws, path /mqtt) and 8443 (wss) unless configured otherwise; on the broker's host, `ss -ltn` lists the ports in use")
	case isTimeout(last):
		f.fix = "the host did not answer: it is down, or a firewall drops connections to port " + port + "; open the port or check the address"
	case errors.Is(last, syscall.EHOSTUNREACH), errors.Is(last, syscall.ENETUNREACH):
		f.fix = "this machine has no route to the broker: check the address and the network (VPN, routes)"
	default:
		f.fix = "check the address and port"
	}
	return nil, f
}

// tcpReason words a dial error without Go's "dial tcp" prefixes.
func tcpReason(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case isTimeout(err):
		return "no answer (timed out)"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// roundDuration keeps three significant figures or so.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(time.Millisecond)
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
