package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// buildVersion and buildCommit may be set at link time, for builds
// without the go command's VCS stamp (a git worktree, a source tarball):
// -ldflags "-X main.buildVersion=v1.2.3 -X main.buildCommit=0123abc".
var buildVersion, buildCommit = "", ""

// version is the version at link time, else the module version from the
// build info ("v1.2.3", or a pseudo-version), else "dev".
func version() string {
	bi, _ := debug.ReadBuildInfo()
	return versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) string {
	if buildVersion != "" {
		return buildVersion
	}
	if bi != nil && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// versionLine is what `tether version` and `tether --version` print, from
// the build info the go command stamps into the binary:
// "tether v1.2.3 commit 0123abcd… (2026-11-30T12:00:00Z, modified) go1.26 linux/amd64".
func versionLine(bi *debug.BuildInfo) string {
	commit, notes := buildCommit, []string{}
	if bi != nil {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.time":
				notes = append([]string{s.Value}, notes...)
			case "vcs.modified":
				if s.Value == "true" {
					notes = append(notes, "modified")
				}
			}
		}
	}
	if commit == "" {
		commit = "unknown"
	} else if len(notes) > 0 {
		commit += " (" + strings.Join(notes, ", ") + ")"
	}
	return fmt.Sprintf("tether %s commit %s %s %s/%s", versionOf(bi), commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// buildInfo is the gauge tether_build_info{version,commit,goversion} = 1,
// so that dashboards and alerts can tell which build runs where.
func buildInfo() prometheus.Collector {
	bi, _ := debug.ReadBuildInfo()
	commit := buildCommit
	if bi != nil {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				commit = s.Value
			}
		}
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "tether_build_info",
		Help:        "Always 1; the labels say which build of Tether runs.",
		ConstLabels: prometheus.Labels{"version": versionOf(bi), "commit": commit, "goversion": runtime.Version()},
	}, func() float64 { return 1 })
}

func printVersion(w io.Writer) {
	bi, _ := debug.ReadBuildInfo()
	fmt.Fprintln(w, versionLine(bi))
}

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "version", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	printVersion(stdout)
	return nil
}
