package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestClusterProcesses: three real `tether serve` processes configured as
// deploy/compose.cluster.yaml does (TETHER_CLUSTER_* variables, the same
// peer list on every node, its own address included) are one broker: a
// message published on the first reaches a subscriber on the third, and
// still does after the second is killed with SIGKILL.
func TestClusterProcesses(t *testing.T) {
	routes := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	var procs []*process
	for i := range routes {
		procs = append(procs, startProcess(t, fmt.Sprintf("TETHER_CLUSTER_NODE=p%d", i+1),
			"TETHER_CLUSTER_LISTEN="+routes[i], "TETHER_CLUSTER_PEERS="+strings.Join(routes, ","), "TETHER_CLUSTER_SECRET="+testClusterSecret))
	}
	got := make(chan string, 100)
	sub := testmqtt.Client(t, procs[2].mqtt, "proc-sub", true, true, func(m paho3.Message) { got <- string(m.Payload()) })
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("procs/#", 1, nil))
	pub := testmqtt.Client(t, procs[0].mqtt, "proc-pub", true, true, nil)
	var before []string // earlier rounds' payloads: late copies may still come
	crosses := func(what string) {
		t.Helper()
		defer func() { before = append(before, what) }()
		// Until the third node's subscription has reached the first (a
		// bus round), a publish crosses to nobody: publish until one
		// arrives.
		deadline := time.Now().Add(20 * time.Second)
		for {
			testmqtt.WaitToken(t, "publish", pub.Publish("procs/"+what, 1, false, what))
			select {
			case p := <-got:
				if p == what {
					return
				}
				if !slices.Contains(before, p) {
					t.Fatalf("received %q, want %q", p, what)
				}
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: nothing crossed from p1 to p3\np1:\n%s\np3:\n%s", what, procs[0].logText(), procs[2].logText())
			}
		}
	}
	crosses("first")
	procs[1].cmd.Process.Kill()
	<-procs[1].exited
	procs[1].exited <- nil
	crosses("after-kill")
}
