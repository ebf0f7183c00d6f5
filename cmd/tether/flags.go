package main

import (
	"flag"
	"time"

	"github.com/tether-iot/tether/configs"
)

// durationFlag defines a duration flag that also takes days ("7d"), as
// configuration keys and their variables do (configs.ParseDuration).
func durationFlag(fs *flag.FlagSet, name string, value time.Duration, usage string) *time.Duration {
	d := value
	fs.Var(configs.DurationFlag{D: &d}, name, usage)
	return &d
}
