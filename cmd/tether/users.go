package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tether-iot/tether/devices"
)

// stdin is where `users add --password-stdin` reads the password.
var stdin io.Reader = os.Stdin

// user is a user as the API returns it.
type user struct {
	Username  string    `json:"username"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// runUsers is `tether users add|list|rm|passwd|role`: user management
// against a running server through its API (all but passwd of one's own
// password need an admin).
func runUsers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func(w io.Writer) {
		fmt.Fprintln(w, "Usage: tether users COMMAND [flags]\n\nCommands:")
		fmt.Fprintln(w, "  add     create a user: users add NAME [--role viewer|operator|admin] [--password-stdin]")
		fmt.Fprintln(w, "  list    list users")
		fmt.Fprintln(w, "  rm      delete a user (their tokens and sessions end): users rm NAME")
		fmt.Fprintln(w, "  passwd  change a password: users passwd [NAME] [--password-stdin] (default: your own)")
		fmt.Fprintln(w, "  role    change a user's role: users role NAME viewer|operator|admin")
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
	case "add":
		return usersAdd(ctx, args[1:], stdout, stderr)
	case "list":
		return usersList(ctx, args[1:], stdout, stderr)
	case "rm":
		return usersRm(ctx, args[1:], stdout, stderr)
	case "passwd":
		return usersPasswd(ctx, args[1:], stdout, stderr)
	case "role":
		return usersRole(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "tether users: unknown command %q\n\n", args[0])
	usage(stderr)
	return errUsage
}

func usersAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("users add", "users add NAME [--role viewer|operator|admin] [--password-stdin]", args, stdout, stderr)
	remote := addRemoteFlags(fs)
	role := fs.String("role", "viewer", "viewer, operator or admin")
	fromStdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input (default: generate one and print it once)")
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
	password, generated := "", false
	if *fromStdin {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read password: %w", err)
		}
		password = strings.TrimRight(line, "\r\n")
		if password == "" {
			return errors.New("read password: standard input is empty")
		}
	} else {
		password, generated = rand.Text(), true
	}
	var u user
	body := map[string]string{"username": pos[0], "password": password, "role": *role}
	if err := c.do(ctx, "POST", "/users", body, &u); err != nil {
		return fmt.Errorf("add user %s: %w", pos[0], err)
	}
	if remote.json {
		out := map[string]any{"username": u.Username, "role": u.Role, "created_at": u.CreatedAt}
		if generated {
			out["password"] = password
		}
		return printJSON(stdout, out)
	}
	fmt.Fprintf(stdout, "user %s created with role %s\n", u.Username, u.Role)
	if generated {
		fmt.Fprintf(stdout, "password: %s\n", password)
		fmt.Fprintln(stdout, "The password is shown only now.")
	}
	return nil
}

func usersList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("users list", "users list", args, stdout, stderr)
	remote := addRemoteFlags(fs)
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
	var out struct {
		Users      []user `json:"users"`
		NextCursor string `json:"next_cursor"`
	}
	next := ""
	var all []user
	for {
		path := "/users?limit=1000"
		if next != "" {
			path += "&cursor=" + next
		}
		if err := c.do(ctx, "GET", path, nil, &out); err != nil {
			return fmt.Errorf("list users: %w", err)
		}
		all = append(all, out.Users...)
		if next = out.NextCursor; next == "" {
			break
		}
	}
	if all == nil {
		all = []user{}
	}
	if remote.json {
		return printJSON(stdout, map[string]any{"users": all, "next_cursor": ""})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USERNAME\tROLE\tCREATED")
	for _, u := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", u.Username, u.Role, u.CreatedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func usersRm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("users rm", "users rm NAME", args, stdout, stderr)
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
	if err := c.do(ctx, "DELETE", "/users/"+url.PathEscape(pos[0]), nil, nil); err != nil {
		return fmt.Errorf("delete user %s: %w", pos[0], err)
	}
	fmt.Fprintf(stdout, "user %s deleted; their tokens and sessions are revoked\n", pos[0])
	return nil
}

func usersRole(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("users role", "users role NAME viewer|operator|admin", args, stdout, stderr)
	remote := addRemoteFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 2, stderr); err != nil {
		return err
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	var u devices.User
	if err := c.do(ctx, "PATCH", "/users/"+url.PathEscape(pos[0]), map[string]string{"role": pos[1]}, &u); err != nil {
		return fmt.Errorf("change the role of %s: %w", pos[0], err)
	}
	if remote.json {
		return printJSON(stdout, u)
	}
	fmt.Fprintf(stdout, "user %s now has role %s\n", u.Username, u.Role)
	return nil
}

// usersPasswd changes a password. Your own needs your current password
// too: asked for first, or, with --password-stdin, the first line (the new
// one the second). Another user's (as an admin) needs only the new one.
func usersPasswd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("users passwd", "users passwd [NAME] [--password-stdin]", args, stdout, stderr)
	remote := addRemoteFlags(fs)
	fromStdin := fs.Bool("password-stdin", false, "read the passwords from standard input: for your own, the current one on the first line and the new one on the second; for another user's, the new one")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return wantArgs(fs, pos, 1, stderr)
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	var me struct {
		Username string `json:"username"`
	}
	if err := c.do(ctx, "GET", "/auth/me", nil, &me); err != nil {
		return fmt.Errorf("change password: %w", err)
	}
	name := me.Username
	if len(pos) == 1 {
		name = pos[0]
	}
	in := bufio.NewReader(stdin)
	body := map[string]string{}
	if name == me.Username {
		if body["current_password"], err = readSecret(in, *fromStdin, stderr, "Current password: "); err != nil {
			return err
		}
	}
	if body["password"], err = readSecret(in, *fromStdin, stderr, "New password: "); err != nil {
		return err
	}
	if !*fromStdin {
		again, err := readSecret(in, false, stderr, "New password again: ")
		if err != nil {
			return err
		}
		if again != body["password"] {
			return errors.New("the two new passwords differ")
		}
	}
	if err := c.do(ctx, "PATCH", "/users/"+url.PathEscape(name), body, nil); err != nil {
		return fmt.Errorf("change the password of %s: %w", name, err)
	}
	fmt.Fprintf(stdout, "password of %s changed; their dashboard sessions are ended (API tokens stay valid)\n", name)
	return nil
}
