// Command tether is one binary that is an MQTT broker, an IoT device
// registry, a live fleet dashboard and a fleet simulator.
//
// Each subcommand lives in its own file: serve.go, certs.go, devices.go,
// users.go, tokens.go, login.go (login and logout), cmd.go, sim.go,
// bench.go, backup.go, restore.go, demo.go, doctor.go, version.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand of the binary.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{
	"serve":   {"run the broker, registry and dashboard (the default)", runServe},
	"version": {"print the version", runVersion},
	"certs":   {"certificate helpers: certs dev --out DIR", runCerts},
	"devices": {"manage devices: " + deviceCommandNames(), runDevices},
	"users":   {"manage users: add|list|rm|passwd|role", runUsers},
	"tokens":  {"manage API tokens: list|create|revoke", runTokens},
	"login":   {"log in to a server and keep the token: login [--server URL]", runLogin},
	"logout":  {"revoke the saved login's token and forget it", runLogout},
	"cmd":     {"send a command to a device: cmd send DEVICE NAME", runCmd},
	"sim":     {"run a simulated device fleet against a broker", runSim},
	"bench":   {"load scenarios against any MQTT broker", runBench},
	"backup":  {"write an online, consistent copy of the database", runBackup},
	"restore": {"replace a stopped server's database with a backup", runRestore},
	"demo":    {"broker, dashboard and a simulated fleet in a temporary directory", runDemo},
	"doctor":  {"diagnose a connection to a broker step by step: doctor URL", runDoctor},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches to a subcommand and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	name := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	} else if len(args) > 0 && isHelp(args[0]) {
		usage(stdout)
		return 0
	} else if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		printVersion(stdout)
		return 0
	}
	if name == "help" {
		if len(args) == 0 {
			usage(stdout)
			return 0
		}
		name, args = args[0], []string{"--help"} // tether help COMMAND
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "tether: unknown command %q\n\n", name)
		usage(stderr)
		return 2
	}
	if helpRequested(args) {
		// Asked-for help is output, not an error: every command's usage
		// (flag's included) goes to stdout and exits 0.
		stderr = stdout
	}
	err := c.run(ctx, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "tether %s: %v\n", name, err)
		return 1
	}
}

func isHelp(a string) bool { return a == "-h" || a == "--help" || a == "-help" }

// helpRequested reports whether args ask for help (-h, -help or --help
// before any "--").
func helpRequested(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if isHelp(a) {
			return true
		}
	}
	return false
}

// errUsage marks an error already reported with usage text.
var errUsage = errors.New("usage")

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: tether [command] [flags]      (tether --version: the version)")
	fmt.Fprintln(w, "\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'tether COMMAND --help' for a command's flags. Without a command, tether serves.")
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints its usage to stderr.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tether "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tether %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and maps a parse failure to errUsage.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return flag.ErrHelp
		}
		return errUsage
	}
	return nil
}
