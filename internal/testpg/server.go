package testpg

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// Server is a PostgreSQL server of the tests' own.
type Server struct {
	dir   string // temporary directory: data/, the socket, log
	bin   string
	attr  *syscall.SysProcAttr
	admin *sql.DB
	n     atomic.Int64

	// mu guards the running server: cmd, and exited (closed when it
	// ends).
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}

	stopOnce sync.Once
	stopErr  error
}

// Binaries returns the directory holding initdb and postgres: $PG_BIN, or
// the newest /usr/lib/postgresql/*/bin (Debian's layout).
func Binaries() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	best, bestV := "", -1
	for _, m := range matches {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(m))))
		if err == nil && v > bestV {
			best, bestV = filepath.Dir(m), v
		}
	}
	if best == "" {
		return "", errors.New("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)")
	}
	return best, nil
}

// Unavailable skips tb when PostgreSQL is not installed, or fails it
// when CI is set (CI installs it: .ci/run).
func Unavailable(tb testing.TB, err error) {
	tb.Helper()
	if os.Getenv("CI") != "" {
		tb.Fatalf("PostgreSQL tests: %v", err)
	}
	tb.Skipf("PostgreSQL tests skipped: %v", err)
}

// New starts a server for tb, stopped when tb ends; skips tb (fails on
// CI) when PostgreSQL is not installed.
func New(tb testing.TB) *Server {
	tb.Helper()
	bin, err := Binaries()
	if err != nil {
		Unavailable(tb, err)
	}
	s, err := Start(bin)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

// Start runs initdb and postgres from bin in a new temporary directory.
// Stop stops the server and removes the directory.
func Start(bin string) (_ *Server, err error) {
	// A short path: a unix socket's path has at most 107 bytes.
	dir, err := os.MkdirTemp(tempBase(), "testpg")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir}
	defer func() {
		if err != nil {
			tail := s.logTail()
			s.Stop()
			err = fmt.Errorf("testpg: %w; the server's log ends:\n%s", err, tail)
		}
	}()
	attr, err := serverUser(dir)
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = attr
	initdb.Env = env()
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	s.bin, s.attr = bin, attr
	if err := s.run(); err != nil {
		return nil, err
	}
	if s.admin, err = sql.Open("pgx", s.URL("postgres")); err != nil {
		return nil, err
	}
	if err := s.ready(); err != nil {
		return nil, err
	}
	return s, nil
}

// run starts postgres on the data directory.
func (s *Server) run() error {
	logf, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), "-D", filepath.Join(s.dir, "data"), "-k", s.dir,
		"-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=32MB")
	cmd.SysProcAttr = s.attr
	cmd.Env = env()
	cmd.Stdout, cmd.Stderr = logf, logf
	exited := make(chan struct{})
	// Started and waited for on one locked thread: the parent-death
	// signal (proc_linux.go) fires when the thread that started the
	// child ends, which must not happen before the server does.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			cmd.Wait()
		}
		close(exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	return nil
}

// ready waits until the server answers.
func (s *Server) ready() error {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := s.admin.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("postgres exited: %v", cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not ready: %w", err)
		}
	}
}

// Pause stops the server (fast shutdown: clients are disconnected) and
// keeps its data; Resume starts it again at the same URL.
func (s *Server) Pause() error { return s.halt() }

// Resume starts the server Pause stopped and waits until it answers.
func (s *Server) Resume() error {
	if err := s.run(); err != nil {
		return err
	}
	return s.ready()
}

// halt stops the running server, if any.
func (s *Server) halt() error {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
		return nil
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
		return errors.New("testpg: postgres did not stop in 30s; killed")
	}
}

// URL is the connection URL of database name on s.
func (s *Server) URL(name string) string {
	q := url.Values{"host": {s.dir}, "user": {"postgres"}, "sslmode": {"disable"}}
	return "postgres:///" + name + "?" + q.Encode()
}

// CreateDatabase creates a new empty database and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context) (string, error) {
	name := "t" + strconv.FormatInt(s.n.Add(1), 10)
	if _, err := s.admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("testpg: create database: %w", err)
	}
	return s.URL(name), nil
}

// NewDatabase creates a new empty database for tb and returns its URL.
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	u, err := s.CreateDatabase(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return u
}

// Stop stops the server (fast shutdown) and removes its directory. A
// second call returns the first one's result.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() { s.stopErr = s.stop() })
	return s.stopErr
}

func (s *Server) stop() error {
	if s.admin != nil {
		s.admin.Close()
	}
	return errors.Join(s.halt(), os.RemoveAll(s.dir))
}

// logTail is the end of the server's log, for errors.
func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// env is the programs' environment: the test's, in the C locale.
func env() []string {
	return append(os.Environ(), "LC_ALL=C", "LANG=C")
}
