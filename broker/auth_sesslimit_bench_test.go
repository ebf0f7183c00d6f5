package broker

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/devices"
)

// benchSessions is how many persistent sessions of other users the
// engine holds in the session bound's benchmarks.
const benchSessions = 50_000

// crowd gives the engine n offline persistent sessions of 1,000 users
// (u0..u999), as a restart would have restored them.
func crowd(srv *mqtt.Server, n int) {
	for i := range n {
		cl := srv.NewClient(nil, "tcp", fmt.Sprint("crowd-", i), false)
		cl.Properties.Username = []byte(fmt.Sprint("u", i%1000))
		cl.Properties.ProtocolVersion = 5
		cl.Properties.Props.SessionExpiryInterval = 3600
		cl.Properties.Props.SessionExpiryIntervalFlag = true
		cl.Stop(nil)
		srv.Clients.Add(cl)
	}
}

// BenchmarkSessionClaim is the ownership check of a viewer's CONNECT
// asking for a persistent session (claim, under ownMu, which every
// CONNECT takes) with 50,000 other persistent sessions in the engine.
func BenchmarkSessionClaim(b *testing.B) {
	e := benchAuthBroker(b)
	crowd(e.b.Server, benchSessions)
	c := e.auth.newConn(devices.Identity{Kind: devices.KindUser, Name: "vi", Role: devices.RoleViewer}, false, "vi-bench")
	cl := e.b.Server.NewClient(nil, "tcp", "vi-bench", false)
	cl.Properties.Username = []byte("vi")
	cl.Properties.ProtocolVersion = 5
	cl.Properties.Props.SessionExpiryInterval = 3600
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if code := e.auth.claim(cl, c); code.Code != 0 {
			b.Fatalf("claim: 0x%02x", code.Code)
		}
		e.auth.unclaim(cl)
	}
}

// BenchmarkSessionConnect is a viewer's MQTT 5 CONNECT with a persistent
// session (taking over its own) and DISCONNECT over TCP, with 50,000
// other persistent sessions in the engine.
func BenchmarkSessionConnect(b *testing.B) {
	e := benchAuthBroker(b)
	e.reg.SetPasswordCost(bcrypt.MinCost)
	const pass = "pw-vi-123456"
	if _, err := e.reg.CreateUser(context.Background(), "vi", pass, devices.RoleViewer); err != nil {
		b.Fatal(err)
	}
	crowd(e.b.Server, benchSessions)
	expiry := uint32(3600)
	b.ResetTimer()
	for range b.N {
		conn, err := net.DialTimeout("tcp", e.tcp, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		c := paho5.NewClient(paho5.ClientConfig{Conn: conn})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ca, err := c.Connect(ctx, &paho5.Connect{ClientID: "vi-bench", KeepAlive: 30, Username: "vi", UsernameFlag: true,
			Password: []byte(pass), PasswordFlag: true, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}})
		cancel()
		if ca == nil || ca.ReasonCode != 0 {
			b.Fatalf("connect: %v %+v", err, ca)
		}
		_ = c.Disconnect(&paho5.Disconnect{})
		<-c.Done()
		conn.Close()
	}
}
