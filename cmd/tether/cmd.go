package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/tether-iot/tether/devices"
)

// serverWaitMax is the longest wait left to the server within one request
// (the client's HTTP timeout is 60s); longer waits poll.
const serverWaitMax = 50 * time.Second

// runCmd is `tether cmd send DEVICE NAME [--params JSON] [--timeout D]
// [--wait D]`: it sends a command through the API and, with --wait, waits
// for its outcome. A command that fails or expires exits 1.
func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "send" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprintln(stdout, "Usage: tether cmd send DEVICE NAME [--params JSON] [--timeout 30s] [--wait 10s] [--server URL] [--token TOKEN] [--json]")
			return nil
		}
		fmt.Fprintln(stderr, "Usage: tether cmd send DEVICE NAME [--params JSON] [--timeout 30s] [--wait 10s]")
		return errUsage
	}
	fs := newFlagSet("cmd send", "cmd send DEVICE NAME [--params JSON] [--timeout 30s] [--wait 10s] [flags]", stderr)
	remote := addRemoteFlags(fs)
	params := fs.String("params", "{}", "the command's parameters, a JSON object")
	timeout := durationFlag(fs, "timeout", 0, "how long the command may take before it expires (default: --wait, or the server's 30s)")
	wait := durationFlag(fs, "wait", 0, "wait this long for the outcome (0: send and return)")
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 2, stderr); err != nil {
		return err
	}
	device, name := pos[0], pos[1]
	var p map[string]any
	if err := json.Unmarshal([]byte(*params), &p); err != nil || p == nil {
		fmt.Fprintf(stderr, "tether cmd send: --params must be a JSON object such as '{\"delay\":5}'\n")
		return errUsage
	}
	if *timeout < 0 || *wait < 0 {
		fmt.Fprintln(stderr, "tether cmd send: --timeout and --wait must not be negative")
		return errUsage
	}
	if *timeout == 0 && *wait > 0 {
		*timeout = *wait
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	body := map[string]any{"name": name, "params": json.RawMessage(*params)}
	if *timeout > 0 {
		body["timeout"] = timeout.Seconds()
	}
	serverWait := *wait > 0 && *timeout <= *wait && *wait <= serverWaitMax
	if serverWait {
		body["wait"] = true
	}
	// Whether the device is connected, to say so if it is not (an error
	// here, such as a viewer's token, is left to the POST to report).
	var dev devices.Device
	offline := c.do(ctx, "GET", "/devices/"+url.PathEscape(device), nil, &dev) == nil && !dev.Online
	var cmd devices.Command
	if err := c.do(ctx, "POST", "/devices/"+url.PathEscape(device)+"/commands", body, &cmd); err != nil {
		return fmt.Errorf("send %s to %s: %w", name, device, err)
	}
	if offline && !cmd.Done() {
		w := stdout
		if remote.json {
			w = stderr // stdout is the JSON document
		}
		fmt.Fprintf(w, "%s is offline: command %s is queued; its persistent session receives it when it reconnects, unless it expires first (at %s)\n",
			device, cmd.ID, cmd.ExpiresAt.Local().Format(time.RFC3339))
	}
	if *wait > 0 && !serverWait && !cmd.Done() {
		if cmd, err = pollCommand(ctx, c, cmd.ID, *wait); err != nil {
			return err
		}
	}
	if remote.json {
		if err := printJSON(stdout, cmd); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "command %s %s\n", cmd.ID, cmd.Status)
		if len(cmd.Result) > 0 && string(cmd.Result) != "null" {
			fmt.Fprintf(stdout, "result: %s\n", cmd.Result)
		}
		if cmd.Error != "" {
			fmt.Fprintf(stdout, "error: %s\n", cmd.Error)
		}
	}
	switch cmd.Status {
	case "failed", "expired":
		return fmt.Errorf("command %s %s", cmd.ID, cmd.Status)
	}
	return nil
}

// pollCommand reads command id until it is done or wait has passed.
func pollCommand(ctx context.Context, c *serverClient, id string, wait time.Duration) (devices.Command, error) {
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		var cmd devices.Command
		if err := c.do(ctx, "GET", "/commands/"+url.PathEscape(id), nil, &cmd); err != nil {
			return cmd, fmt.Errorf("command %s: %w", id, err)
		}
		if cmd.Done() || time.Now().After(deadline) {
			return cmd, nil
		}
		select {
		case <-ctx.Done():
			return cmd, ctx.Err()
		case <-tick.C:
		}
	}
}
