package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// stdin is where `users add --password-stdin` reads the password.
var stdin io.Reader = os.Stdin

// user is a user as the API returns it.
type user struct {
	Username  string    `json:"username"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// runUsers is `tether users add|list`: user management against a running
// server through its API (it needs an admin's token).
func runUsers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func(w io.Writer) {
		fmt.Fprintln(w, "Usage: tether users COMMAND [flags]\n\nCommands:")
		fmt.Fprintln(w, "  add     create a user: users add NAME [--role viewer|operator|admin] [--password-stdin]")
		fmt.Fprintln(w, "  list    list users")
		fmt.Fprintln(w, "\nEach takes --server URL (TETHER_SERVER), --token TOKEN (TETHER_TOKEN) and --json.")
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
	}
	fmt.Fprintf(stderr, "tether users: unknown command %q\n\n", args[0])
	usage(stderr)
	return errUsage
}

func usersAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("users add", "users add NAME [--role viewer|operator|admin] [--password-stdin]", stderr)
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
	fs := newFlagSet("users list", "users list", stderr)
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
