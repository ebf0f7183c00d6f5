// Command go-paho is a Tether device in Go with Eclipse Paho
// (github.com/eclipse/paho.mqtt.golang), over TCP, TLS or WebSocket: it
// answers commands and publishes a reading every 5 s.
//
//	MQTT_URL=tcp://localhost:1883 DEVICE_ID=th-1 SECRET=... go run ./docs/examples/go-paho
//
// MQTT_URL may be tcp://, ssl:// (TLS), ws:// or wss://; CA_FILE is the
// certificate to trust for TLS (cert.pem from `tether certs dev`); COUNT=n
// stops after n readings (default: run until Ctrl-C).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func main() {
	url := env("MQTT_URL", "tcp://localhost:1883")
	id := env("DEVICE_ID", "th-1")
	count, _ := strconv.Atoi(env("COUNT", "0"))

	// A device's client id is its id, and so is its user name. A persistent
	// session (clean session off) keeps commands sent while it is offline.
	opts := mqtt.NewClientOptions().AddBroker(url).
		SetClientID(id).SetUsername(id).SetPassword(os.Getenv("SECRET")).
		SetCleanSession(false).SetOrderMatters(false)
	if ca := os.Getenv("CA_FILE"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			log.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		opts.SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	}
	opts.SetOnConnectHandler(func(c mqtt.Client) {
		c.Subscribe("devices/"+id+"/commands/#", 1, func(c mqtt.Client, m mqtt.Message) {
			var cmd struct {
				ID     string          `json:"id"`
				Params json.RawMessage `json:"params"`
			}
			if err := json.Unmarshal(m.Payload(), &cmd); err != nil {
				log.Printf("command: %v", err)
				return
			}
			log.Printf("command %s %s", m.Topic(), cmd.Params)
			c.Publish("devices/"+id+"/responses/"+cmd.ID, 1, false, `{"status":"ok","result":{"done":true}}`)
		})
	})

	c := mqtt.NewClient(opts)
	if t := c.Connect(); t.Wait() && t.Error() != nil {
		log.Fatalf("connect to %s: %v", url, t.Error())
	}
	defer c.Disconnect(250)
	for sent := 1; ; sent++ {
		reading := fmt.Sprintf(`{"temp":%.1f}`, 20+5*rand.Float64())
		if t := c.Publish("devices/"+id+"/telemetry", 1, false, reading); t.Wait() && t.Error() != nil {
			log.Fatalf("publish: %v", t.Error())
		}
		log.Printf("published %s", reading)
		if count > 0 && sent >= count {
			return
		}
		time.Sleep(5 * time.Second)
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
