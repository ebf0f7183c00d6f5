package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// This file is the CLI's client of a running server's HTTP API, shared by
// the remote subcommands (devices, users, cmd). A subcommand adds the
// common flags with addRemoteFlags, then calls the API:
//
//	fs := newFlagSet("cmd send", "cmd send DEVICE NAME [flags]", stderr)
//	remote := addRemoteFlags(fs)
//	... parse ...
//	c, err := remote.client()
//	var out map[string]any
//	err = c.do(ctx, "POST", "/devices/"+url.PathEscape(id)+"/commands", body, &out)
//
// An error answer comes back as an *apiError that prints as the server's
// message ("403 forbidden: this needs the admin role").

// defaultServer is where the remote subcommands look for a server.
const defaultServer = "http://127.0.0.1:8080"

// remoteFlags are the flags every remote subcommand takes.
type remoteFlags struct {
	server string
	token  string
	ca     string
	json   bool
	// noSaved: do not fall back on the saved login (login, logout).
	noSaved bool
}

// addRemoteFlags adds --server, --token and --json to fs; the first two
// default to TETHER_SERVER and TETHER_TOKEN, then to the saved login
// (tether login).
func addRemoteFlags(fs *flag.FlagSet) *remoteFlags {
	rf := &remoteFlags{}
	fs.StringVar(&rf.server, "server", "", "URL of the Tether server (default: TETHER_SERVER, else the saved login's, else "+defaultServer+")")
	fs.StringVar(&rf.token, "token", "", "API token or login token (TETHER_TOKEN; prefer the variable: flags show in ps)")
	fs.StringVar(&rf.ca, "ca", "", "PEM certificate to trust for an https --server (e.g. the cert.pem of tether certs dev)")
	fs.BoolVar(&rf.json, "json", false, "print the API's JSON instead of a table")
	return rf
}

// client returns the API client the flags describe. The saved login's
// server is the default server; without --token and TETHER_TOKEN its
// token is used, and only for that server.
func (rf *remoteFlags) client() (*serverClient, error) {
	server, tok := rf.server, rf.token
	if server == "" {
		server = os.Getenv("TETHER_SERVER")
	}
	if tok == "" {
		tok = os.Getenv("TETHER_TOKEN")
	}
	if !rf.noSaved && (server == "" || tok == "") {
		l, ok, err := loadLogin()
		if err != nil && tok == "" {
			return nil, err
		}
		if ok && server == "" {
			server = l.Server
		}
		if ok && tok == "" {
			tok = savedToken(server)
		}
	}
	if server == "" {
		server = defaultServer
	}
	c, err := newServerClient(server, tok)
	if err != nil || rf.ca == "" {
		return c, err
	}
	pem, err := os.ReadFile(rf.ca)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--ca %s: no PEM certificate in it", rf.ca)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	c.http.Transport = tr
	return c, nil
}

// serverClient calls a Tether server's JSON API (/api/v1) with a bearer
// token. It is safe for concurrent use.
type serverClient struct {
	base  string // server URL + "/api/v1", no trailing slash
	token string
	http  *http.Client
}

// newServerClient checks server (an http or https URL) and returns a client.
func newServerClient(server, token string) (*serverClient, error) {
	u, err := url.Parse(strings.TrimRight(server, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want a URL like %s", server, defaultServer)
	}
	base := u.String()
	if !strings.HasSuffix(base, "/api/v1") {
		base += "/api/v1"
	}
	return &serverClient{base: base, token: token, http: &http.Client{Timeout: 60 * time.Second}}, nil
}

// server is the server's URL, without /api/v1.
func (c *serverClient) server() string { return strings.TrimSuffix(c.base, "/api/v1") }

// apiError is an error answer of the API: its status and the error body's
// code and message.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
	if e.Status == http.StatusUnauthorized {
		msg += " (run tether login, or give a token with --token or TETHER_TOKEN)"
	}
	return msg
}

// do sends method path (relative to /api/v1; escape path segments with
// url.PathEscape) with in as the JSON body (none when nil) and decodes a
// JSON answer into out (ignored when nil). A status of 400 or more is an
// *apiError.
func (c *serverClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	if res.StatusCode >= 400 {
		return readError(res)
	}
	if out == nil || res.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(res.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// readError turns an error answer into an *apiError; a body that is not
// the API's error JSON (a proxy's page, say) is reduced to its status.
func readError(res *http.Response) error {
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err := json.Unmarshal(b, &eb); err != nil || eb.Error.Code == "" {
		return &apiError{Status: res.StatusCode, Code: strings.ReplaceAll(strings.ToLower(http.StatusText(res.StatusCode)), " ", "_"),
			Message: "the server answered " + res.Status + " without an API error body (is --server a Tether server?)"}
	}
	return &apiError{Status: res.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseArgs parses args with fs allowing flags after positional
// arguments ("devices show ID --json"), and returns the positionals.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// wantArgs reports a usage error unless n positional arguments were given.
func wantArgs(fs *flag.FlagSet, pos []string, n int, stderr io.Writer) error {
	if len(pos) == n {
		return nil
	}
	fmt.Fprintf(stderr, "%s: want %d argument(s), got %d\n", fs.Name(), n, len(pos))
	fs.Usage()
	return errUsage
}
