package simulator

import (
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// simStats are the fleet's counters, updated by every device.
type simStats struct {
	connected         atomic.Int64 // gauge
	peakConnected     atomic.Int64
	connects          atomic.Int64
	connectFailures   atomic.Int64
	connectionsLost   atomic.Int64
	published         atomic.Int64
	publishErrors     atomic.Int64
	commandsReceived  atomic.Int64
	commandsAnswered  atomic.Int64
	commandsFailed    atomic.Int64
	commandsIgnored   atomic.Int64
	commandsDuplicate atomic.Int64
	twinUpdates       atomic.Int64
	reboots           atomic.Int64
	churned           atomic.Int64
	dropped           atomic.Int64 // inbound messages dropped because a device was busy
}

func (s *simStats) online() {
	n := s.connected.Add(1)
	for {
		peak := s.peakConnected.Load()
		if n <= peak || s.peakConnected.CompareAndSwap(peak, n) {
			return
		}
	}
}

func (s *simStats) offline() { s.connected.Add(-1) }

// errors counts the failures a progress line reports.
func (s *simStats) errors() int64 {
	return s.connectFailures.Load() + s.publishErrors.Load() + s.dropped.Load()
}

// Summary is the final report of a fleet run, printed as one JSON line.
type Summary struct {
	Devices          int     `json:"devices"`
	Broker           string  `json:"broker"`
	Transport        string  `json:"transport"`
	QoS              byte    `json:"qos"`
	DurationSeconds  float64 `json:"duration_s"`
	Connected        int64   `json:"connected"` // at the end, before disconnecting
	PeakConnected    int64   `json:"peak_connected"`
	Connects         int64   `json:"connects"`
	ConnectFailures  int64   `json:"connect_failures"`
	ConnectionsLost  int64   `json:"connections_lost"`
	Published        int64   `json:"published"`
	PublishErrors    int64   `json:"publish_errors"`
	MessagesPerSec   float64 `json:"messages_per_s"`
	CommandsReceived int64   `json:"commands_received"`
	CommandsAnswered int64   `json:"commands_answered"`
	CommandsFailed   int64   `json:"commands_failed"`
	CommandsIgnored  int64   `json:"commands_ignored"`
	// CommandsDuplicate counts commands delivered again (QoS 1 redelivery)
	// that the device had already acted on.
	CommandsDuplicate int64 `json:"commands_duplicate"`
	TwinUpdates       int64 `json:"twin_updates"`
	Reboots           int64 `json:"reboots"`
	Churned           int64 `json:"churned"`
	Dropped           int64 `json:"dropped"`
	// Errors lists each kind of error with its count ("connect: not
	// Authorized (16×)"), in the order first seen.
	Errors []string `json:"errors,omitempty"`
}

// summary fills the counters of a Summary.
func (s *simStats) summary(connected int64, elapsed time.Duration) Summary {
	sum := Summary{
		DurationSeconds:   round3(elapsed.Seconds()),
		Connected:         connected,
		PeakConnected:     s.peakConnected.Load(),
		Connects:          s.connects.Load(),
		ConnectFailures:   s.connectFailures.Load(),
		ConnectionsLost:   s.connectionsLost.Load(),
		Published:         s.published.Load(),
		PublishErrors:     s.publishErrors.Load(),
		CommandsReceived:  s.commandsReceived.Load(),
		CommandsAnswered:  s.commandsAnswered.Load(),
		CommandsFailed:    s.commandsFailed.Load(),
		CommandsIgnored:   s.commandsIgnored.Load(),
		CommandsDuplicate: s.commandsDuplicate.Load(),
		TwinUpdates:       s.twinUpdates.Load(),
		Reboots:           s.reboots.Load(),
		Churned:           s.churned.Load(),
		Dropped:           s.dropped.Load(),
	}
	if elapsed > 0 {
		sum.MessagesPerSec = round3(float64(sum.Published) / elapsed.Seconds())
	}
	return sum
}

// progress writes line() to w every interval until stop is called. stop
// waits for the goroutine and is safe to call more than once.
func progress(w io.Writer, every time.Duration, line func(elapsed, since time.Duration) string) (stop func()) {
	if w == nil || every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		last := start
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				fmt.Fprintln(w, line(now.Sub(start), now.Sub(last)))
				last = now
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

// rate returns per-second change of a counter since the previous call.
type rate struct{ last int64 }

func (r *rate) per(now int64, since time.Duration) float64 {
	d := now - r.last
	r.last = now
	if since <= 0 {
		return 0
	}
	return float64(d) / since.Seconds()
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
