package cluster

import (
	"reflect"
	"testing"

	"github.com/tether-iot/tether/broker/info"
)

// TestOnePerClient: a session seen on two nodes while it moves is listed
// once: online wins, else the node that sorts first.
func TestOnePerClient(t *testing.T) {
	got := onePerClient([]info.Session{
		{ClientID: "a", Node: "n2"}, {ClientID: "b", Node: "n1"}, {ClientID: "a", Node: "n1"},
		{ClientID: "c", Node: "n1"}, {ClientID: "c", Node: "n3", Online: true}, {ClientID: "b", Node: "n2"},
	})
	want := []info.Session{{ClientID: "a", Node: "n1"}, {ClientID: "b", Node: "n1"}, {ClientID: "c", Node: "n3", Online: true}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
