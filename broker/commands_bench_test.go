package broker

import (
	"fmt"
	"sync/atomic"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// BenchmarkCommandHookQosComplete is the command hook's share of every
// QoS 1 acknowledgement in the broker, from many connections at once,
// with no command in flight (the common case): it looked the packet id up
// in the client's in-flight store and took the hook's one mutex for each;
// now it is one atomic load.
//
//	go test -run XXX -bench CommandHookQosComplete -benchmem ./broker/
func BenchmarkCommandHookQosComplete(b *testing.B) {
	h := NewCommandHook(nil, nil)
	srv := mqtt.New(&mqtt.Options{InlineClient: false})
	clients := make([]*mqtt.Client, 64)
	for i := range clients {
		clients[i] = srv.NewClient(nil, "tcp", fmt.Sprintf("c%d", i), false)
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		cl := clients[int(next.Add(1))%len(clients)]
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 7}
		for pb.Next() {
			h.OnQosComplete(cl, pk)
		}
	})
}
