package listeners

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Certificate is the server's TLS certificate and key, loaded from two
// PEM files and loaded again, for new connections, when they change: on
// Reload (SIGHUP) and when Watch sees the files' size or time change.
// Connections already open keep the pair they started with. A new pair
// that does not load (a half-written renewal, a key that does not match)
// is logged and the old one kept. Use GetCertificate in tls.Config.
type Certificate struct {
	certFile, keyFile string
	log               *slog.Logger

	cur atomic.Pointer[loadedCert]

	// mu serializes Reload; it guards stamp.
	mu    sync.Mutex
	stamp string
}

type loadedCert struct {
	cert  *tls.Certificate
	names []string
}

// LoadCertificate loads the pair; an error here stops start-up.
func LoadCertificate(certFile, keyFile string, log *slog.Logger) (*Certificate, error) {
	if log == nil {
		log = slog.Default()
	}
	c := &Certificate{certFile: certFile, keyFile: keyFile, log: log.With("component", "tls")}
	c.stamp = c.fileStamp()
	lc, err := c.load()
	if err != nil {
		return nil, err
	}
	c.cur.Store(lc)
	return c, nil
}

func (c *Certificate) load() (*loadedCert, error) {
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: load certificate %s and key %s: %w", c.certFile, c.keyFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("tls: certificate %s: %w", c.certFile, err)
	}
	pair.Leaf = leaf
	names := append([]string{}, leaf.DNSNames...)
	return &loadedCert{cert: &pair, names: names}, nil
}

// GetCertificate is tls.Config.GetCertificate: the current pair.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load().cert, nil
}

// Leaf is the current certificate.
func (c *Certificate) Leaf() *x509.Certificate { return c.cur.Load().cert.Leaf }

// Names are the current certificate's DNS names (for the /mqtt origin
// check: the server is known by them).
func (c *Certificate) Names() []string { return c.cur.Load().names }

// Reload loads the files again. On error the current pair stays and the
// error is logged and returned.
func (c *Certificate) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stamp = c.fileStamp()
	lc, err := c.load()
	if err != nil {
		c.log.Error("tls: the new certificate does not load; still serving the previous one", "error", err,
			"serial", c.Leaf().SerialNumber.Text(16), "not_after", c.Leaf().NotAfter)
		return err
	}
	old := c.Leaf()
	c.cur.Store(lc)
	if !old.Equal(lc.cert.Leaf) {
		c.log.Info("tls: certificate reloaded; new connections use it", "cert", c.certFile,
			"serial", lc.cert.Leaf.SerialNumber.Text(16), "names", lc.names, "not_after", lc.cert.Leaf.NotAfter)
	}
	return nil
}

// changed reports whether either file's size or modification time (or
// existence) differs from the last load.
func (c *Certificate) changed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fileStamp() != c.stamp
}

// fileStamp sums up both files' size and time (through symbolic links,
// as certbot's live/ directory has them).
func (c *Certificate) fileStamp() string {
	s := ""
	for _, p := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			s += "missing;"
			continue
		}
		s += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return s
}

// Watch reloads when the files have changed, checking every interval,
// until stop is closed. A renewal is often two writes (certificate, then
// key): a change is loaded once the files have stood still for one
// interval, and a pair that does not match yet is tried again at the next
// change. (SIGHUP calls Reload itself.)
func (c *Certificate) Watch(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	pending := ""
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if !c.changed() {
				pending = ""
				continue
			}
			now := c.fileStamp()
			if pending != now {
				pending = now // changed since the last tick: wait for it to settle
				continue
			}
			_ = c.Reload()
			pending = ""
		}
	}
}
