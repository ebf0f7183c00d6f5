package tlsexplain

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"
)

// Context is what the explanation may name: the transport and host the
// client asked for and the flags of the command that failed.
type Context struct {
	Transport    string // "tls" or "wss"
	Host         string // the name the certificate is checked against
	CAFile       string // the extra roots given, if any
	CAFlag       string // the flag that gives them: "--cafile", "--ca"
	InsecureFlag string // the flag that skips verification
}

// Failure is a failed TLS connection in words: why, and what to change.
type Failure struct {
	Why, Fix string
	Err      error // the error explained
}

func (f *Failure) Error() string { return f.Why + "; " + f.Fix }
func (f *Failure) Unwrap() error { return f.Err }

// Handshake explains err, an error of a TLS handshake, or of the first
// read after it (a TLS 1.3 server refuses a client certificate only
// then). A certificate the client did not verify is explained by
// Certificate.
func Handshake(err error, c Context) *Failure {
	f := &Failure{Err: err, Why: "the TLS handshake failed: " + err.Error(),
		Fix: "the server and this client share no TLS version or cipher (this client offers TLS 1.2+), or the server wants a client certificate"}
	plain := "tcp://"
	if c.Transport == "wss" {
		plain = "ws://"
	}
	var rh tls.RecordHeaderError
	var cv *tls.CertificateVerificationError
	switch {
	case errors.As(err, &cv) && len(cv.UnverifiedCertificates) > 0:
		g := Certificate(cv.Err, cv.UnverifiedCertificates[0], c)
		g.Err = err
		return g
	case errors.As(err, &rh):
		f.Why = "the port answered, but not with TLS: it is a plain (unencrypted) port"
		if strings.HasPrefix(string(rh.RecordHeader[:]), "HTTP/") {
			f.Why = "the port answered with plain HTTP, not TLS"
			plain = "ws://"
		}
		f.Fix = fmt.Sprintf("use %s for this port, or the broker's TLS port (Tether: 8883 for MQTT over TLS, 8443 for wss)", plain)
	case ClientCertificateWanted(err):
		f.Why = "the server wants a client certificate (it answered " + remoteAlert(err) + ")"
		f.Fix = "this client sends none: the broker requires mutual TLS on this port; connect to a port without it, or present a certificate its authority signed"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "connection reset"):
		f.Why = "the server closed the connection during the TLS handshake"
		f.Fix = fmt.Sprintf("the port may not speak TLS (try %s), or the server wants a client certificate or a TLS version or cipher this client does not offer (TLS 1.2+)", plain)
	case isTimeout(err):
		f.Why = "the server did not answer the TLS handshake in time"
		f.Fix = fmt.Sprintf("the port may be a plain MQTT or HTTP port waiting for the client to speak first: try %s", plain)
	}
	return f
}

// ClientCertificateWanted reports whether err is the TLS alert of a
// server that refused the connection for want of a client certificate:
// "certificate required" (TLS 1.3), or "bad certificate", which TLS 1.2
// servers send for it (some send only "handshake failure", which says no
// more than that the handshake failed).
func ClientCertificateWanted(err error) bool {
	switch remoteAlert(err) {
	case "certificate required", "bad certificate":
		return true
	}
	return false
}

// remoteAlert is the description of the TLS alert the server sent, or "".
func remoteAlert(err error) string {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "remote error" || oe.Err == nil {
		return ""
	}
	return strings.TrimPrefix(oe.Err.Error(), "tls: ")
}

// Certificate explains err, the failed verification of leaf for c.Host.
func Certificate(err error, leaf *x509.Certificate, c Context) *Failure {
	host := c.Host
	f := &Failure{Err: err, Why: "the certificate does not verify: " + err.Error(),
		Fix: "give the broker a certificate for " + host + " from an authority this client trusts"}
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		who := fmt.Sprintf("issued by %q, an authority this client does not trust", leaf.Issuer.String())
		if SelfSigned(leaf) {
			who = fmt.Sprintf("self-signed (issued by itself, %q)", leaf.Subject.String())
		}
		f.Why = "the certificate is not trusted: it is " + who
		f.Fix = fmt.Sprintf("pass %s with the certificate of the authority that signed it (for `tether certs dev`, its cert.pem); a device needs the same file as its CA; %s skips the check while testing", c.CAFlag, c.InsecureFlag)
		if c.CAFile != "" {
			f.Fix = fmt.Sprintf("%s %s does not hold the certificate that signed it (%q): give the right file", c.CAFlag, c.CAFile, leaf.Issuer.String())
		}
	case errors.As(err, &he):
		f.Why = fmt.Sprintf("the certificate is for %s, not %q", CertNames(leaf), host)
		f.Fix = "connect with one of the names the certificate holds, or issue a certificate that names " + host + " (a DNS name or IP address in its Subject Alternative Names)"
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		now := time.Now()
		if now.Before(leaf.NotBefore) {
			f.Why = fmt.Sprintf("the certificate is not valid before %s (now %s)", leaf.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
			f.Fix = "check this machine's clock and the broker's; or issue the certificate with an earlier start"
		} else {
			f.Why = fmt.Sprintf("the certificate expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339))
			f.Fix = "renew the broker's certificate (tether certs dev --force for a development one) and restart the broker; if it is not expired, check this machine's clock"
		}
	}
	if leaf.VerifyHostname(host) != nil && !errors.As(err, &he) {
		f.Why += fmt.Sprintf("; also, it is for %s, not %q", CertNames(leaf), host)
	}
	return f
}

// CertNames lists the names a certificate holds.
func CertNames(c *x509.Certificate) string {
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return fmt.Sprintf("no names (no Subject Alternative Names; clients ignore the Common Name %q)", c.Subject.CommonName)
	}
	return strings.Join(names, ", ")
}

// SelfSigned reports whether c signed itself.
func SelfSigned(c *x509.Certificate) bool {
	return c.Issuer.String() == c.Subject.String() && c.CheckSignatureFrom(c) == nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
