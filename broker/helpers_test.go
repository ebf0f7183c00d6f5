package broker

import (
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// checkFor polls cond until it returns nil, failing the test with cond's
// last error once d has passed.
func checkFor(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", d, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitToken waits for a paho operation and fails the test if it does not
// succeed within 10 s.
func waitToken(t testing.TB, what string, tok paho.Token) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v", what, tok.Error())
	}
}
