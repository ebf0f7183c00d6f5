package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tether-iot/tether/devices"
)

// deviceList is a page of GET /devices.
type deviceList struct {
	Devices    []devices.Device `json:"devices"`
	NextCursor string           `json:"next_cursor"`
}

// deviceCommand is one subcommand of `tether devices`.
type deviceCommand struct {
	name, synopsis, summary string
	run                     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// deviceCommands returns the subcommands of `tether devices`.
func deviceCommands() []deviceCommand {
	return []deviceCommand{
		{"list", "devices list [--status online|offline] [--type T] [--label K[=V]] [--q TEXT] [--limit N] [--all]", "list devices", devicesList},
		{"add", "devices add [ID] [--name NAME] [--type TYPE] [--label K=V]... [--topic FILTER:ACCESS]...", "register a device and print its secret (shown only now)", devicesAdd},
		{"set", "devices set ID [--name NAME] [--type TYPE] [--label K=V]... [--topic FILTER:ACCESS]... [--no-topics] [--enabled=true|false]", "change a device (--label and --topic replace the whole set)", devicesSet},
		{"show", "devices show ID", "show one device", devicesShow},
		{"rm", "devices rm ID...", "delete devices (they are disconnected)", devicesRm},
		{"rotate", "devices rotate ID", "give a device a new secret and print it (the old one stops working)", devicesRotate},
		{"export", "devices export ID [--out FILE]", "everything stored about a device, secret excepted, as one JSON document (admin)", devicesExport},
	}
}

// deviceCommandNames is "list|add|...", the subcommands of `tether
// devices` for `tether help`, from the list that dispatches them.
func deviceCommandNames() string {
	var names []string
	for _, c := range deviceCommands() {
		names = append(names, c.name)
	}
	return strings.Join(names, "|")
}

// runDevices is `tether devices list|add|set|show|rm|rotate|export`: device
// management against a running server through its API.
func runDevices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func(w io.Writer) {
		fmt.Fprintln(w, "Usage: tether devices COMMAND [flags]\n\nCommands:")
		for _, c := range deviceCommands() {
			fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
		}
		fmt.Fprintln(w, "\nEach takes --server URL (TETHER_SERVER), --token TOKEN (TETHER_TOKEN) and --json.")
		fmt.Fprintln(w, "Run 'tether devices COMMAND --help' for its flags.")
	}
	if len(args) == 0 {
		usage(stderr)
		return errUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return nil
	}
	for _, c := range deviceCommands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "tether devices: unknown command %q\n\n", args[0])
	usage(stderr)
	return errUsage
}

func deviceSynopsis(name string) string {
	for _, c := range deviceCommands() {
		if c.name == name {
			return c.synopsis
		}
	}
	return "devices " + name
}

func devicesList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices list", deviceSynopsis("list"), stderr)
	remote := addRemoteFlags(fs)
	status := fs.String("status", "", "online or offline")
	typ := fs.String("type", "", "only this device type")
	label := fs.String("label", "", "only devices with label KEY=VALUE, or with label KEY set")
	text := fs.String("q", "", "only devices whose id or name contains TEXT")
	limit := fs.Int("limit", 100, "devices per page (1 to 1000)")
	cursor := fs.String("cursor", "", "the page after this cursor (printed after a page)")
	all := fs.Bool("all", false, "follow the pages to the end")
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
	q := url.Values{}
	for k, v := range map[string]string{"status": *status, "type": *typ, "label": *label, "q": *text} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", fmt.Sprint(*limit))
	var out deviceList
	next := *cursor
	for {
		if next != "" {
			q.Set("cursor", next)
		}
		var page deviceList
		if err := c.do(ctx, "GET", "/devices?"+q.Encode(), nil, &page); err != nil {
			return fmt.Errorf("list devices: %w", err)
		}
		out.Devices = append(out.Devices, page.Devices...)
		out.NextCursor, next = page.NextCursor, page.NextCursor
		if !*all || next == "" {
			break
		}
	}
	if out.Devices == nil {
		out.Devices = []devices.Device{}
	}
	if remote.json {
		return printJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tTYPE\tENABLED\tONLINE\tLAST SEEN\tTRANSPORT\tLABELS")
	for _, d := range out.Devices {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, dash(d.Name), dash(d.Type), yesNo(d.Enabled),
			yesNo(d.Online), when(d.LastSeen), dash(d.Transport), labels(d.Labels))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if out.NextCursor != "" {
		fmt.Fprintf(stderr, "more devices: add --cursor %s, or --all\n", out.NextCursor)
	}
	return nil
}

func devicesAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices add", deviceSynopsis("add"), stderr)
	remote := addRemoteFlags(fs)
	name := fs.String("name", "", "display name (default: the id)")
	typ := fs.String("type", "", "device type")
	var lbls labelFlag
	fs.Var(&lbls, "label", "a label KEY=VALUE (repeat for more)")
	var topics topicFlag
	fs.Var(&topics, "topic", topicUsage)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return wantArgs(fs, pos, 1, stderr)
	}
	body := map[string]any{"name": *name, "type": *typ, "labels": map[string]string(lbls), "topics": topics.list()}
	if len(pos) == 1 {
		body["id"] = pos[0]
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	var d devices.DeviceSecret
	if err := c.do(ctx, "POST", "/devices", body, &d); err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	return printSecret(stdout, remote.json, d, "registered")
}

func devicesSet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices set", deviceSynopsis("set"), stderr)
	remote := addRemoteFlags(fs)
	name := fs.String("name", "", "display name (empty: the id)")
	typ := fs.String("type", "", "device type")
	var lbls labelFlag
	fs.Var(&lbls, "label", "a label KEY=VALUE (repeat for more; replaces all labels)")
	var topics topicFlag
	fs.Var(&topics, "topic", topicUsage+"; replaces all grants, applied to a connected device at once")
	noTopics := fs.Bool("no-topics", false, "remove all topic grants")
	enabled := fs.Bool("enabled", true, "enable (true) or disable (false: disconnects it)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 1, stderr); err != nil {
		return err
	}
	body := map[string]any{}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "name":
			body["name"] = *name
		case "type":
			body["type"] = *typ
		case "label":
			body["labels"] = map[string]string(lbls)
		case "topic":
			body["topics"] = topics.list()
		case "no-topics":
			if *noTopics {
				body["topics"] = []devices.TopicGrant{}
			}
		case "enabled":
			body["enabled"] = *enabled
		}
	})
	if len(topics) > 0 && *noTopics {
		fmt.Fprintln(stderr, "tether devices set: --topic and --no-topics contradict each other")
		return errUsage
	}
	if len(body) == 0 {
		fmt.Fprintln(stderr, "tether devices set: nothing to change (see --help)")
		return errUsage
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	var d map[string]any
	if err := c.do(ctx, "PATCH", "/devices/"+url.PathEscape(pos[0]), body, &d); err != nil {
		return fmt.Errorf("set device %s: %w", pos[0], err)
	}
	if remote.json {
		return printJSON(stdout, d)
	}
	return printFields(stdout, d)
}

func devicesShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices show", deviceSynopsis("show"), stderr)
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
	var d map[string]any
	if err := c.do(ctx, "GET", "/devices/"+url.PathEscape(pos[0]), nil, &d); err != nil {
		return fmt.Errorf("show device %s: %w", pos[0], err)
	}
	if remote.json {
		return printJSON(stdout, d)
	}
	return printFields(stdout, d)
}

func devicesRm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices rm", deviceSynopsis("rm"), stderr)
	remote := addRemoteFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return wantArgs(fs, pos, 1, stderr)
	}
	c, err := remote.client()
	if err != nil {
		return err
	}
	for _, id := range pos {
		if err := c.do(ctx, "DELETE", "/devices/"+url.PathEscape(id), nil, nil); err != nil {
			return fmt.Errorf("remove device %s: %w", id, err)
		}
		if remote.json {
			if err := printJSON(stdout, map[string]any{"id": id, "deleted": true}); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(stdout, "device %s deleted\n", id)
		}
	}
	return nil
}

func devicesRotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices rotate", deviceSynopsis("rotate"), stderr)
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
	var d devices.DeviceSecret
	if err := c.do(ctx, "POST", "/devices/"+url.PathEscape(pos[0])+"/secret", nil, &d); err != nil {
		return fmt.Errorf("rotate secret of %s: %w", pos[0], err)
	}
	return printSecret(stdout, remote.json, d, "has a new secret")
}

// printSecret prints a device that has just got its secret.
func printSecret(w io.Writer, asJSON bool, d devices.DeviceSecret, what string) error {
	if asJSON {
		return printJSON(w, d)
	}
	fmt.Fprintf(w, "device %s %s\n", d.ID, what)
	fmt.Fprintf(w, "secret: %s\n", d.Secret)
	fmt.Fprintln(w, "The secret is shown only now: the device connects with client id and username", d.ID, "and this secret as password.")
	return nil
}

// printFields prints an object's fields one per line, sorted by name.
func printFields(w io.Writer, obj map[string]any) error {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, k := range keys {
		v := obj[k]
		var s string
		switch x := v.(type) {
		case nil:
			s = "-"
		case string:
			s = dash(x)
		case map[string]any, []any:
			b, _ := json.Marshal(x)
			s = string(b)
		default:
			s = fmt.Sprint(x)
		}
		fmt.Fprintf(tw, "%s:\t%s\n", k, s)
	}
	return tw.Flush()
}

// labelFlag collects repeated --label KEY=VALUE flags.
type labelFlag map[string]string

func (l *labelFlag) String() string { return "" }

func (l *labelFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	if *l == nil {
		*l = labelFlag{}
	}
	(*l)[k] = v
	return nil
}

const topicUsage = "a topic grant FILTER:ACCESS, ACCESS publish, subscribe or all, %c = the device's id, e.g. 'tele/%c/#:publish' (repeat for more)"

// topicFlag collects repeated --topic FILTER:ACCESS flags, each checked
// as the server will.
type topicFlag []devices.TopicGrant

func (t *topicFlag) String() string { return "" }

func (t *topicFlag) Set(s string) error {
	g, err := devices.ParseGrant(s)
	if err != nil {
		var ie *devices.InvalidError
		if errors.As(err, &ie) {
			return errors.New(ie.Msg)
		}
		return err
	}
	*t = append(*t, g)
	return nil
}

func (t topicFlag) list() []devices.TopicGrant {
	if t == nil {
		return []devices.TopicGrant{}
	}
	return t
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func when(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "never"
	}
	return t.Local().Format(time.DateTime)
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}
