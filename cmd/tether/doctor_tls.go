package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// caFile is the --cafile of `tether doctor`: its certificates, alone and
// added to the system's roots.
type caFile struct {
	path  string
	only  *x509.CertPool // the file's certificates alone
	roots *x509.CertPool // the system's roots and the file's
	names []string       // subjects, for the report
}

func loadCAFile(path string) (*caFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--cafile: %w", err)
	}
	ca := &caFile{path: path, only: x509.NewCertPool()}
	if ca.roots, err = x509.SystemCertPool(); err != nil || ca.roots == nil {
		ca.roots = x509.NewCertPool()
	}
	for len(data) > 0 {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("--cafile %s: %w", path, err)
		}
		ca.only.AddCert(c)
		ca.roots.AddCert(c)
		ca.names = append(ca.names, c.Subject.String())
	}
	if len(ca.names) == 0 {
		return nil, fmt.Errorf("--cafile %s: no PEM certificate in it", path)
	}
	return ca, nil
}

// handshake is the TLS step: it completes the handshake whatever the
// certificate, describes the certificate, then verifies it as a client
// would, and fails (unless --insecure) when that verification fails.
func (d *doctor) handshake(conn net.Conn) (net.Conn, error) {
	host := d.ep.Hostname()
	conf := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} // verified below, to explain
	if net.ParseIP(host) == nil {
		conf.ServerName = host
	}
	if d.ep.Transport == "wss" {
		conf.NextProtos = []string{"http/1.1"}
	}
	tc := tls.Client(conn, conf)
	_ = tc.SetDeadline(time.Now().Add(d.opts.timeout))
	err := tc.Handshake()
	_ = tc.SetDeadline(time.Time{})
	if err != nil {
		return nil, tlsHandshakeFailure(err, d.ep.Transport)
	}
	st := tc.ConnectionState()
	leaf := st.PeerCertificates[0]
	d.line("ok", "TLS", fmt.Sprintf("handshake done: %s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)))
	d.detail(describeChain(st.PeerCertificates))

	intermediates := x509.NewCertPool()
	for _, c := range st.PeerCertificates[1:] {
		intermediates.AddCert(c)
	}
	opts := x509.VerifyOptions{DNSName: host, Intermediates: intermediates}
	if d.opts.caPool != nil {
		opts.Roots = d.opts.caPool.roots
		// Whether the file alone vouches for the chain, names aside.
		only := x509.VerifyOptions{Roots: d.opts.caPool.only, Intermediates: intermediates, CurrentTime: leaf.NotBefore.Add(time.Second)}
		if _, err := leaf.Verify(only); err == nil {
			d.detail(fmt.Sprintf("--cafile %s verifies this chain", d.opts.caPool.path))
		} else {
			d.detail(fmt.Sprintf("--cafile %s does not verify this chain: the certificate was issued by %q, the file holds %s",
				d.opts.caPool.path, leaf.Issuer.String(), quoteAll(d.opts.caPool.names)))
		}
	}
	if _, err := leaf.Verify(opts); err != nil {
		f := certificateFailure(err, leaf, host, d.opts.caPool)
		if !d.opts.insecure {
			tc.Close()
			return nil, f
		}
		d.line("warn", "TLS", f.why)
		d.detail("--insecure: going on without a verified certificate; a client that verifies would stop here")
		d.detail("fix: " + f.fix)
	} else {
		d.line("ok", "TLS", fmt.Sprintf("the certificate is valid for %q and trusted", host))
	}
	return tc, nil
}

// tlsHandshakeFailure explains a handshake that did not complete.
func tlsHandshakeFailure(err error, transport string) *stepFailure {
	f := &stepFailure{step: "TLS", why: "the TLS handshake failed: " + err.Error()}
	plain := "tcp://"
	if transport == "wss" {
		plain = "ws://"
	}
	var rh tls.RecordHeaderError
	switch {
	case errors.As(err, &rh):
		f.why = "the port answered, but not with TLS: it is a plain (unencrypted) port"
		if strings.HasPrefix(string(rh.RecordHeader[:]), "HTTP/") {
			f.why = "the port answered with plain HTTP, not TLS"
			plain = "ws://"
		}
		f.fix = fmt.Sprintf("use %s for this port, or the broker's TLS port (Tether: 8883 for MQTT over TLS, 8443 for wss)", plain)
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "connection reset"):
		f.why = "the server closed the connection during the TLS handshake"
		f.fix = fmt.Sprintf("the port may not speak TLS (try %s), or the server wants a client certificate or a TLS version or cipher this client does not offer (TLS 1.2+)", plain)
	case isTimeout(err):
		f.why = "the server did not answer the TLS handshake in time"
		f.fix = fmt.Sprintf("the port may be a plain MQTT or HTTP port waiting for the client to speak first: try %s", plain)
	default:
		f.fix = "the server and this client share no TLS version or cipher, or the server wants a client certificate"
	}
	return f
}

// certificateFailure explains why the certificate did not verify.
func certificateFailure(err error, leaf *x509.Certificate, host string, ca *caFile) *stepFailure {
	f := &stepFailure{step: "TLS", why: "the certificate does not verify: " + err.Error(),
		fix: "give the broker a certificate for " + host + " from an authority this client trusts"}
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		who := fmt.Sprintf("issued by %q, an authority this client does not trust", leaf.Issuer.String())
		if selfSigned(leaf) {
			who = "self-signed (issued by itself, " + quote(leaf.Subject.String()) + ")"
		}
		f.why = "the certificate is not trusted: it is " + who
		f.fix = "pass --cafile with the certificate of the authority that signed it (for `tether certs dev`, its cert.pem); a device needs the same file as its CA; --insecure skips the check while testing"
		if ca != nil {
			f.fix = fmt.Sprintf("--cafile %s does not hold the certificate that signed it (%q): give the right file", ca.path, leaf.Issuer.String())
		}
	case errors.As(err, &he):
		f.why = fmt.Sprintf("the certificate is for %s, not %q", certNames(leaf), host)
		f.fix = "connect with one of the names the certificate holds, or issue a certificate that names " + host + " (a DNS name or IP address in its Subject Alternative Names)"
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		now := time.Now()
		if now.Before(leaf.NotBefore) {
			f.why = fmt.Sprintf("the certificate is not valid before %s (now %s)", leaf.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
			f.fix = "check this machine's clock and the broker's; or issue the certificate with an earlier start"
		} else {
			f.why = fmt.Sprintf("the certificate expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339))
			f.fix = "renew the broker's certificate (tether certs dev --force for a development one) and restart the broker; if it is not expired, check this machine's clock"
		}
	}
	if leaf.VerifyHostname(host) != nil && !errors.As(err, &he) {
		f.why += fmt.Sprintf("; also, it is for %s, not %q", certNames(leaf), host)
	}
	return f
}

// describeChain lists each certificate's subject, names, issuer and validity.
func describeChain(chain []*x509.Certificate) string {
	var b strings.Builder
	for i, c := range chain {
		if i > 0 {
			b.WriteByte('\n')
		}
		left := time.Until(c.NotAfter)
		fmt.Fprintf(&b, "certificate %d: %s", i, quote(c.Subject.String()))
		if i == 0 {
			fmt.Fprintf(&b, ", for %s", certNames(c))
		}
		issuer := quote(c.Issuer.String())
		if selfSigned(c) {
			issuer = "itself (self-signed)"
		}
		fmt.Fprintf(&b, "\n  issued by %s; valid %s to %s", issuer,
			c.NotBefore.UTC().Format("2006-01-02"), c.NotAfter.UTC().Format("2006-01-02"))
		if left > 0 {
			fmt.Fprintf(&b, " (%d days left)", int(left.Hours()/24))
		} else {
			b.WriteString(" (expired)")
		}
	}
	return b.String()
}

// certNames lists the names a certificate holds.
func certNames(c *x509.Certificate) string {
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "no names (no Subject Alternative Names; clients ignore the Common Name " + quote(c.Subject.CommonName) + ")"
	}
	return strings.Join(names, ", ")
}

func selfSigned(c *x509.Certificate) bool {
	return c.Issuer.String() == c.Subject.String() && c.CheckSignatureFrom(c) == nil
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = quote(s)
	}
	return strings.Join(q, ", ")
}
