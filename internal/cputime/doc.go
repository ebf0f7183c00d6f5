// Package cputime reads the CPU time the process has used, for benchmarks
// that report CPU per message: on a machine shared with other work the
// CPU a run takes varies far less than its wall-clock rate.
package cputime
