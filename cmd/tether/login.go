package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/term"
)

// savedLogin is what `tether login` keeps in loginPath(), mode 0600: an
// API token of its own (revoked by `tether logout`) and the server it is
// for. Remote commands use it when neither --token nor TETHER_TOKEN is
// given, and only for that server.
type savedLogin struct {
	Server    string     `json:"server"`
	Username  string     `json:"username"`
	Role      string     `json:"role"`
	Token     string     `json:"token"`
	TokenID   string     `json:"token_id"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// loginPath is where the login is kept: os.UserConfigDir()/tether/login.json.
func loginPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory: %w", err)
	}
	return filepath.Join(dir, "tether", "login.json"), nil
}

// loadLogin reads the saved login; ok is false when there is none.
func loadLogin() (l savedLogin, ok bool, err error) {
	p, err := loginPath()
	if err != nil {
		return l, false, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return l, false, nil
	}
	if err != nil {
		return l, false, fmt.Errorf("read the saved login: %w", err)
	}
	if err := json.Unmarshal(b, &l); err != nil || l.Token == "" || l.Server == "" {
		return l, false, fmt.Errorf("the saved login %s is damaged: run tether login again", p)
	}
	return l, true, nil
}

// saveLogin writes l to loginPath() readable by its owner only, replacing
// any older login in one step.
func saveLogin(l savedLogin) (string, error) {
	p, err := loginPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", fmt.Errorf("save login: %w", err)
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".login-*")
	if err != nil {
		return "", fmt.Errorf("save login: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return "", fmt.Errorf("save login: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return "", fmt.Errorf("save login: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("save login: %w", err)
	}
	if err := os.Rename(f.Name(), p); err != nil {
		return "", fmt.Errorf("save login: %w", err)
	}
	return p, nil
}

// savedToken is the saved login's token if it is for server, else "".
func savedToken(server string) string {
	if l, ok, err := loadLogin(); err == nil && ok && sameServer(server, l.Server) {
		return l.Token
	}
	return ""
}

// sameServer reports whether two server URLs name the same API.
func sameServer(a, b string) bool {
	ca, err1 := newServerClient(a, "")
	cb, err2 := newServerClient(b, "")
	return err1 == nil && err2 == nil && ca.base == cb.base
}

// runLogin is `tether login`: it logs in with a password, creates an API
// token for this machine and keeps it, 0600, in the config directory.
func runLogin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("login", "login [--server URL] [--username U] [--password-stdin]", args, stdout, stderr)
	server := fs.String("server", envOr("TETHER_SERVER", defaultServer), "URL of the Tether server (TETHER_SERVER)")
	username := fs.String("username", "", "user name (default: ask)")
	fromStdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input (default: ask, without echo)")
	ca := fs.String("ca", "", "PEM certificate to trust for an https --server")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, stderr); err != nil {
		return err
	}
	rf := &remoteFlags{server: *server, ca: *ca, noSaved: true}
	c, err := rf.client()
	if err != nil {
		return err
	}
	in := bufio.NewReader(stdin)
	if *username == "" {
		if *fromStdin || !isTerminal(stdin) {
			return errors.New("give --username (standard input is not a terminal to ask on)")
		}
		fmt.Fprint(stderr, "Username: ")
		line, err := in.ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read user name: %w", err)
		}
		*username = strings.TrimSpace(line)
	}
	password, err := readSecret(in, *fromStdin, stderr, "Password: ")
	if err != nil {
		return err
	}
	var sess struct {
		Token string `json:"token"`
		Role  string `json:"role"`
	}
	if err := c.do(ctx, "POST", "/auth/login", map[string]string{"username": *username, "password": password}, &sess); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.Status == http.StatusUnauthorized {
			return errors.New("login refused: wrong user name or password")
		}
		return fmt.Errorf("login: %w", err)
	}
	// Trade the short session for a token of this machine's own, which
	// logout can revoke without touching the user's other logins.
	c.token = sess.Token
	host, _ := os.Hostname()
	var tok struct {
		ID        string     `json:"id"`
		Token     string     `json:"token"`
		ExpiresAt *time.Time `json:"expires_at"`
	}
	err = c.do(ctx, "POST", "/tokens", map[string]string{"name": "tether login on " + printableHost(host)}, &tok)
	_ = c.do(ctx, "POST", "/auth/logout", nil, nil) // the session is not needed any more
	if err != nil {
		return fmt.Errorf("login: create a token: %w", err)
	}
	old, hadOld, _ := loadLogin()
	p, err := saveLogin(savedLogin{Server: c.server(), Username: *username, Role: sess.Role, Token: tok.Token, TokenID: tok.ID, ExpiresAt: tok.ExpiresAt})
	if err != nil {
		return err
	}
	if hadOld && sameServer(old.Server, c.server()) && old.TokenID != tok.ID {
		// The login this one replaces: its token is not needed any more.
		c.token = old.Token
		_ = c.do(ctx, "DELETE", "/tokens/"+url.PathEscape(old.TokenID), nil, nil)
	}
	fmt.Fprintf(stdout, "Logged in to %s as %s (%s). The token is saved in %s", c.server(), *username, sess.Role, p)
	if tok.ExpiresAt != nil {
		fmt.Fprintf(stdout, " and expires on %s", tok.ExpiresAt.Local().Format(time.DateOnly))
	}
	fmt.Fprintln(stdout, ".")
	return nil
}

// runLogout is `tether logout`: it revokes the saved login's token on its
// server and deletes the file.
func runLogout(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("logout", "logout [--force]", args, stdout, stderr)
	force := fs.Bool("force", false, "delete the saved login even when the server cannot be reached to revoke its token")
	ca := fs.String("ca", "", "PEM certificate to trust for an https server")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, stderr); err != nil {
		return err
	}
	l, ok, err := loadLogin()
	if err != nil && !*force {
		return err
	}
	p, _ := loginPath()
	if !ok && err == nil {
		fmt.Fprintln(stdout, "Not logged in.")
		return nil
	}
	if err == nil {
		c, cerr := (&remoteFlags{server: l.Server, token: l.Token, ca: *ca, noSaved: true}).client()
		if cerr == nil {
			cerr = c.do(ctx, "DELETE", "/tokens/"+url.PathEscape(l.TokenID), nil, nil)
		}
		var ae *apiError
		if errors.As(cerr, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusNotFound) {
			cerr = nil // revoked or expired already
		}
		if cerr != nil && !*force {
			return fmt.Errorf("revoke the saved token: %w (tether logout --force deletes the saved login anyway)", cerr)
		}
		if cerr != nil {
			fmt.Fprintf(stderr, "tether logout: could not revoke the token (%v); it stays valid on the server until revoked there\n", cerr)
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete the saved login: %w", err)
	}
	if ok {
		fmt.Fprintf(stdout, "Logged out of %s.\n", l.Server)
	} else {
		fmt.Fprintln(stdout, "Deleted the saved login.")
	}
	return nil
}

// readSecret reads a password: the first line of in when fromStdin, else
// asked for on the terminal without echo.
func readSecret(in *bufio.Reader, fromStdin bool, stderr io.Writer, prompt string) (string, error) {
	if fromStdin {
		line, err := in.ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read password: %w", err)
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			return "", errors.New("read password: standard input has no (more) lines")
		}
		return pw, nil
	}
	f, ok := stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", errors.New("standard input is not a terminal to ask for the password on: use --password-stdin")
	}
	fmt.Fprint(stderr, prompt)
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(stderr)
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	if len(b) == 0 {
		return "", errors.New("read password: empty")
	}
	return string(b), nil
}

// isTerminal reports whether r is a terminal.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// printableHost keeps a host name fit for a token's name.
func printableHost(h string) string {
	h = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, h)
	if len(h) > 64 {
		h = h[:64]
	}
	if h == "" {
		h = "this machine"
	}
	return h
}

// envOr returns the environment variable name, or def when it is empty.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// newCommandFlags is newFlagSet for a subcommand whose -h/--help prints
// its usage on stdout (errors still go to stderr).
func newCommandFlags(name, synopsis string, args []string, stdout, stderr io.Writer) *flag.FlagSet {
	w := stderr
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			w = stdout
		}
	}
	return newFlagSet(name, synopsis, w)
}
