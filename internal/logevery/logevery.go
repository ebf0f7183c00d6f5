package logevery

import (
	"sync"
	"time"
)

// pruneAt is how many keys are remembered before those logged more than
// an interval ago are forgotten.
const pruneAt = 4096

// Keys remembers when each key was last logged. Safe for concurrent use.
type Keys struct {
	every time.Duration

	mu   sync.Mutex
	last map[string]time.Time
}

// New returns Keys that let each key log once per every.
func New(every time.Duration) *Keys {
	return &Keys{every: every, last: map[string]time.Time{}}
}

// Allow reports whether key's event at now is to be logged: its first, or
// the first since every has passed since it was last logged.
func (k *Keys) Allow(key string, now time.Time) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if last, seen := k.last[key]; seen && now.Sub(last) < k.every {
		return false
	}
	if len(k.last) >= pruneAt {
		for key, t := range k.last {
			if now.Sub(t) >= k.every {
				delete(k.last, key)
			}
		}
	}
	k.last[key] = now
	return true
}
