package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
)

// runTokens is `tether tokens list|create|revoke`: API tokens against a
// running server. An admin sees and revokes everyone's; anyone else their
// own.
func runTokens(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func(w io.Writer) {
		fmt.Fprintln(w, "Usage: tether tokens COMMAND [flags]\n\nCommands:")
		fmt.Fprintln(w, "  list    list API tokens (an admin sees everyone's): tokens list [--user NAME]")
		fmt.Fprintln(w, "  create  create a token, shown once: tokens create NAME [--user NAME] [--ttl 30d|0]")
		fmt.Fprintln(w, "  revoke  revoke a token; its MQTT connections close: tokens revoke ID")
		fmt.Fprintln(w, "\nEach takes --server URL (TETHER_SERVER), --token TOKEN (TETHER_TOKEN) and --json;")
		fmt.Fprintln(w, "without them, the login saved by tether login.")
	}
	if len(args) == 0 {
		usage(stderr)
		return errUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return nil
	case "list":
		return tokensList(ctx, args[1:], stdout, stderr)
	case "create":
		return tokensCreate(ctx, args[1:], stdout, stderr)
	case "revoke":
		return tokensRevoke(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "tether tokens: unknown command %q\n\n", args[0])
	usage(stderr)
	return errUsage
}

func tokensList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("tokens list", "tokens list [--user NAME]", args, stdout, stderr)
	remote := addRemoteFlags(fs)
	user := fs.String("user", "", "only this user's tokens (another user's needs the admin role)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, stderr); err != nil {
		return err
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	all := []devices.Token{}
	next := ""
	for {
		q := url.Values{"limit": {"1000"}}
		if *user != "" {
			q.Set("username", *user)
		}
		if next != "" {
			q.Set("cursor", next)
		}
		var page struct {
			Tokens     []devices.Token `json:"tokens"`
			NextCursor string          `json:"next_cursor"`
		}
		if err := c.do(ctx, "GET", "/tokens?"+q.Encode(), nil, &page); err != nil {
			return fmt.Errorf("list tokens: %w", err)
		}
		all = append(all, page.Tokens...)
		if next = page.NextCursor; next == "" {
			break
		}
	}
	if remote.json {
		return printJSON(stdout, map[string]any{"tokens": all, "next_cursor": ""})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tUSER\tCREATED\tEXPIRES")
	for _, t := range all {
		exp := "never"
		if t.ExpiresAt != nil {
			exp = t.ExpiresAt.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Username, t.CreatedAt.Local().Format(time.DateTime), exp)
	}
	return tw.Flush()
}

func tokensCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("tokens create", "tokens create NAME [--user NAME] [--ttl DURATION]", args, stdout, stderr)
	remote := addRemoteFlags(fs)
	user := fs.String("user", "", "owner of the token (default: you; another user needs the admin role)")
	ttl := fs.String("ttl", "", "lifetime such as 30d or 720h; 0 never expires (default: the server's, 90 days)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 1, stderr); err != nil {
		return err
	}
	body := map[string]any{"name": pos[0]}
	if *user != "" {
		body["username"] = *user
	}
	if *ttl != "" {
		d, err := configs.ParseDuration(*ttl) // days too, as every duration flag
		if err != nil || d < 0 || (d > 0 && d < time.Second) {
			fmt.Fprintf(stderr, "tether tokens create: --ttl %q: want a duration such as 30d or 720h, or 0 for never\n", *ttl)
			return errUsage
		}
		body["ttl"] = int64(d / time.Second)
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	var out struct {
		devices.Token
		Plaintext string `json:"token"`
	}
	if err := c.do(ctx, "POST", "/tokens", body, &out); err != nil {
		return fmt.Errorf("create token: %w", err)
	}
	if remote.json {
		return printJSON(stdout, out)
	}
	exp := "never expires"
	if out.ExpiresAt != nil {
		exp = "expires " + out.ExpiresAt.Local().Format(time.DateTime)
	}
	fmt.Fprintf(stdout, "token %s (%s) for %s, %s:\n%s\nThe token is shown only now.\n", out.ID, out.Name, out.Username, exp, out.Plaintext)
	return nil
}

func tokensRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("tokens revoke", "tokens revoke ID", args, stdout, stderr)
	remote := addRemoteFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 1, stderr); err != nil {
		return err
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	if err := c.do(ctx, "DELETE", "/tokens/"+url.PathEscape(pos[0]), nil, nil); err != nil {
		return fmt.Errorf("revoke token %s: %w", pos[0], err)
	}
	fmt.Fprintf(stdout, "token %s revoked\n", pos[0])
	return nil
}
