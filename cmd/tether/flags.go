package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/simulator"
)

// durationFlag defines a duration flag that also takes days ("7d"), as
// configuration keys and their variables do (configs.ParseDuration).
func durationFlag(fs *flag.FlagSet, name string, value time.Duration, usage string) *time.Duration {
	d := value
	fs.Var(configs.DurationFlag{D: &d}, name, usage)
	return &d
}

// refuseZero refuses a flag given on the command line as 0 (or "" for a
// string) where the simulator would read 0 as "the default" and so run
// something other than what was asked (--pubs 0 ran 10 publishers).
// want maps each such flag to what it takes, for the error.
func refuseZero(fs *flag.FlagSet, want map[string]string) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		what, ok := want[f.Name]
		if !ok || err != nil {
			return
		}
		if v := f.Value.String(); v == "" || v == "0" || v == "-0" { // a DurationFlag of 0 prints ""
			zero := "0"
			if g, ok := f.Value.(flag.Getter); ok {
				if _, ok := g.Get().(string); ok {
					zero = "empty"
				}
			}
			err = fmt.Errorf("--%s: %s is not allowed: want %s (leave the flag out for its default)", f.Name, zero, what)
		}
	})
	return err
}

// checkTLSFlags refuses --ca and --insecure-skip-verify where nothing
// would use them: a plain (tcp, ws) broker, unless an https API server
// takes them (sim --server). They were silently ignored.
func checkTLSFlags(ep simulator.Endpoint, ca string, insecure, httpsServer bool) error {
	if (ca == "" && !insecure) || httpsServer || ep.Transport == simulator.TransportTLS || ep.Transport == simulator.TransportWSS {
		return nil
	}
	name := "--ca"
	if ca == "" {
		name = "--insecure-skip-verify"
	}
	return fmt.Errorf("%s is for TLS, and the broker %s is plain %s: use tls:// or wss:// (Tether's ports 8883, 8443), or leave %s out", name, ep.URL(), ep.Transport, name)
}
