package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/configs"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	caFile string
	dir    string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: t.TempDir()}
	ca.caFile = filepath.Join(ca.dir, "ca.pem")
	writePEM(t, ca.caFile, "CERTIFICATE", der)
	return ca
}

// issue writes a node certificate for 127.0.0.1 signed by the CA and
// returns its certificate and key files.
func (ca *testCA) issue(t *testing.T, node string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: node},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(ca.dir, node+".pem"), filepath.Join(ca.dir, node+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

func writePEM(t *testing.T, file, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestClusterRouteTLS: two nodes whose routes use TLS with certificates
// from one CA form the cluster and carry messages both ways; a node with
// a certificate from another CA, or with none, cannot join (and a
// half-given TLS configuration is refused at start, naming the key).
func TestClusterRouteTLS(t *testing.T) {
	ca := newTestCA(t, "tether routes")
	apps := startCluster(t, 2, func(i int, cfg *configs.Config) {
		cfg.Cluster.TLSCert, cfg.Cluster.TLSKey = ca.issue(t, fmt.Sprintf("node%d", i+1))
		cfg.Cluster.TLSCA = ca.caFile
	})
	for _, pair := range [][2]*app{{apps[0], apps[1]}, {apps[1], apps[0]}} {
		from, to := pair[0], pair[1]
		topic := "tls/" + from.cluster.Name()
		s := connectClient(t, to, clientSpec{5, "tcp"}, nil)
		s.subscribe(t, topic, 1)
		waitRoutes(t, from, topic, to)
		p := connectClient(t, from, clientSpec{3, "tcp"}, nil)
		p.publish(t, topic, "over tls", 1, false)
		expectMessage(t, s.inbox(), message{topic, "over tls", 1, false})
	}

	other := newTestCA(t, "someone else")
	outsider := func(name string, edit func(*configs.Config)) *app {
		cfg := testConfig(t)
		cfg.Cluster.Node, cfg.Cluster.Listen, cfg.Cluster.Secret = name, "127.0.0.1:0", testClusterSecret
		cfg.Cluster.Peers = []string{apps[0].cluster.RouteAddr()}
		edit(&cfg)
		return startTestApp(t, cfg)
	}
	wrongCA := outsider("wrongca", func(cfg *configs.Config) {
		cfg.Cluster.TLSCert, cfg.Cluster.TLSKey = other.issue(t, "wrongca")
		cfg.Cluster.TLSCA = other.caFile
	})
	// Its certificate says the right CA, its chain does not.
	mixed := outsider("mixed", func(cfg *configs.Config) {
		cfg.Cluster.TLSCert, cfg.Cluster.TLSKey = other.issue(t, "mixed")
		cfg.Cluster.TLSCA = ca.caFile
	})
	plain := outsider("plain", func(*configs.Config) {})
	// The NATS servers retry a route every second: over several tries,
	// none joins, and the two nodes still hear only each other.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline); <-tick.C {
		for _, a := range []*app{wrongCA, mixed, plain} {
			if n := len(a.cluster.Nodes()); n != 1 || a.cluster.Warning() == "" {
				t.Fatalf("%s joined a TLS cluster: hears %d nodes", a.cluster.Name(), n)
			}
		}
		for _, a := range apps {
			if n := len(a.cluster.Nodes()); n != 2 {
				t.Fatalf("%s hears %d nodes, want 2", a.cluster.Name(), n)
			}
		}
	}

	cfg := testConfig(t)
	cfg.Cluster.Listen, cfg.Cluster.TLSCA = "127.0.0.1:0", ca.caFile
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "cluster.tls_cert") {
		t.Fatalf("half a TLS configuration: %v", err)
	}
}
