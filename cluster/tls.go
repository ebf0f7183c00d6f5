package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats-server/v2/server"
)

// routeTLS gives the embedded server's routes TLS with mutual
// certificates when o names them (cluster.tls_cert, cluster.tls_key,
// cluster.tls_ca): each route, accepted or made, presents this node's
// certificate and requires the other node's, both signed by the CA. A
// server without such a certificate cannot join, and nothing on the
// route port is readable on the wire.
func routeTLS(o *Options, opts *server.Options) error {
	if o.TLSCert == "" && o.TLSKey == "" && o.TLSCA == "" {
		return nil
	}
	if o.TLSCert == "" || o.TLSKey == "" || o.TLSCA == "" {
		return errors.New("cluster: cluster.tls_cert, cluster.tls_key and cluster.tls_ca go together")
	}
	cert, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
	if err != nil {
		return fmt.Errorf("cluster: cluster.tls_cert %s, cluster.tls_key %s: %w", o.TLSCert, o.TLSKey, err)
	}
	pem, err := os.ReadFile(o.TLSCA)
	if err != nil {
		return fmt.Errorf("cluster: cluster.tls_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("cluster: cluster.tls_ca %s: no PEM certificate in it", o.TLSCA)
	}
	opts.Cluster.TLSConfig = &tls.Config{
		Certificates: []tls.Certificate{cert},
		// Accepted routes: the other node's certificate, from the CA.
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  pool,
		// Routes made: the other node's certificate, from the CA, for
		// the address dialled.
		RootCAs:    pool,
		MinVersion: tls.VersionTLS12,
	}
	opts.Cluster.TLSTimeout = 5 // seconds: a handshake on a loaded node
	return nil
}
