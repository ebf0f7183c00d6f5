package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/tether-iot/tether/internal/tlsexplain"
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
		return nil, tlsFailure(tlsexplain.Handshake(err, d.tlsContext()))
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
		f := tlsFailure(tlsexplain.Certificate(err, leaf, d.tlsContext()))
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

// tlsContext is what tlsexplain may name for this run.
func (d *doctor) tlsContext() tlsexplain.Context {
	c := tlsexplain.Context{Transport: d.ep.Transport, Host: d.ep.Hostname(), CAFlag: "--cafile", InsecureFlag: "--insecure"}
	if d.opts.caPool != nil {
		c.CAFile = d.opts.caPool.path
	}
	return c
}

// clientCertificateWanted is the TLS step's failure when err, met after
// the handshake, is a server's refusal for want of a client certificate:
// a TLS 1.3 server sends it only once the client has finished its side of
// the handshake. Nil for any other error.
func (d *doctor) clientCertificateWanted(err error) *stepFailure {
	var f *stepFailure
	if errors.As(err, &f) && f.cause != nil {
		err = f.cause
	}
	if !tlsexplain.ClientCertificateWanted(err) {
		return nil
	}
	return tlsFailure(tlsexplain.Handshake(err, d.tlsContext()))
}

// tlsFailure is a tlsexplain failure as the TLS step's.
func tlsFailure(f *tlsexplain.Failure) *stepFailure {
	return &stepFailure{step: "TLS", why: f.Why, fix: f.Fix}
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
			fmt.Fprintf(&b, ", for %s", tlsexplain.CertNames(c))
		}
		issuer := quote(c.Issuer.String())
		if tlsexplain.SelfSigned(c) {
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

func quote(s string) string { return fmt.Sprintf("%q", s) }

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = quote(s)
	}
	return strings.Join(q, ", ")
}
