package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// The matrix's mosquitto rows: mosquitto_sub, mosquitto_pub and
// mosquitto_rr (Debian's mosquitto-clients) over TCP and TLS, one process
// per role. Request/response has a paho.golang responder, since no
// mosquitto client answers requests.
func conformMosquitto(t *testing.T, e *conformEnv) {
	sub, pub, rr := mosquitto(t, "mosquitto_sub"), mosquitto(t, "mosquitto_pub"), mosquitto(t, "mosquitto_rr")
	for _, v5 := range []bool{false, true} {
		for _, tr := range []string{"tcp", "tls"} {
			row := fmt.Sprintf("mosquitto / %s / %s", versionName(v5), tr)
			base := []string{"-h", "127.0.0.1", "-p", port(e.tcp), "-V", "mqttv311"}
			if tr == "tls" {
				base = []string{"-h", "127.0.0.1", "-p", port(e.tls), "-V", "mqttv311", "--cafile", e.ca}
			}
			if v5 {
				base[5] = "mqttv5"
			}
			with := func(more ...string) []string { return append(append([]string{}, base...), more...) }
			// msub starts mosquitto_sub and returns once it is subscribed.
			msub := func(t *testing.T, more ...string) *subscriber {
				args := append([]string{"-oL", sub}, with(append(more, "-d", "-i", cuniq("mosq-sub"))...)...)
				return startSubscriber(t, exec.Command("stdbuf", args...), func(l string) bool { return strings.Contains(l, "received SUBACK") })
			}
			mpub := func(t *testing.T, more ...string) {
				runClient(t, exec.Command(pub, with(append(more, "-i", cuniq("mosq-pub"))...)...))
			}
			t.Run(versionName(v5)+"-"+tr, func(t *testing.T) {
				for _, c := range conformCases {
					e.runCase(t, row, v5, c, func(t *testing.T) {
						topic := "conform/" + cuniq("mosq-"+c)
						switch c {
						case "connect":
							runClient(t, exec.Command(sub, with("-t", topic, "-E")...))
						case "qos0", "qos1", "qos2":
							q := c[3:]
							s := msub(t, "-t", topic, "-q", q, "-C", "1", "-F", "%q %p")
							mpub(t, "-t", topic, "-q", q, "-m", "payload")
							s.expectLine(t, q+" payload")
						case "retained":
							mpub(t, "-t", topic, "-q", "1", "-r", "-m", "kept")
							s := msub(t, "-t", topic, "-C", "1", "-F", "%r %p")
							s.expectLine(t, "1 kept")
							mpub(t, "-t", topic, "-q", "1", "-r", "-n")
						case "will":
							s := msub(t, "-t", topic, "-C", "1", "-F", "%p")
							victim := msub(t, "-t", topic+"/other", "--will-topic", topic, "--will-payload", "gone", "--will-qos", "1")
							_ = victim.cmd.Process.Kill() // no DISCONNECT: the will goes
							s.expectLine(t, "gone")
						case "user_properties":
							s := msub(t, "-t", topic, "-C", "1", "-F", "%P|%p")
							mpub(t, "-t", topic, "-q", "1", "-m", "p", "-D", "publish", "user-property", "site", "north",
								"-D", "publish", "user-property", "unit", "C")
							s.expectLine(t, "site:north unit:C|p")
						case "request_response":
							mosquittoResponder(t, e, topic)
							out, err := exec.Command(rr, with("-t", topic, "-e", topic+"/resp", "-m", "question", "-W", "5",
								"-D", "publish", "correlation-data", "corr-42", "-F", "%D|%p")...).CombinedOutput()
							if err != nil || strings.TrimSpace(string(out)) != "corr-42|answer" {
								t.Fatalf("mosquitto_rr: %v: %q", err, out)
							}
						case "shared":
							marker := topic + "/marker"
							subs := []*subscriber{msub(t, "-t", "$share/g/"+topic, "-t", marker, "-q", "1", "-F", "%t %p"),
								msub(t, "-t", "$share/g/"+topic, "-t", marker, "-q", "1", "-F", "%t %p")}
							p := exec.Command(pub, with("-t", topic, "-q", "1", "-l", "-i", cuniq("mosq-pub"))...)
							p.Stdin = strings.NewReader("m0\nm1\nm2\nm3\nm4\nm5\nm6\nm7\nm8\nm9\n")
							runClient(t, p)
							mpub(t, "-t", marker, "-q", "1", "-m", "end")
							seen := map[string]int{}
							for _, s := range subs {
								for l := s.nextLine(t); l != marker+" end"; l = s.nextLine(t) {
									if strings.HasPrefix(l, topic+" ") {
										seen[l]++
									}
								}
							}
							if len(seen) != 10 {
								t.Fatalf("the group received %v", seen)
							}
							for l, n := range seen {
								if n != 1 {
									t.Fatalf("%q received %d times", l, n)
								}
							}
						case "subscription_id":
							s := msub(t, "-t", topic, "-C", "1", "-F", "%S %p", "-D", "subscribe", "subscription-identifier", "7")
							mpub(t, "-t", topic, "-q", "1", "-m", "x")
							s.expectLine(t, "7 x")
						case "topic_alias":
							s := msub(t, "-t", topic, "-q", "1", "-C", "2", "-F", "%t %p")
							p := exec.Command(pub, with("-t", topic, "-q", "1", "-l", "-D", "publish", "topic-alias", "1", "-i", cuniq("mosq-pub"))...)
							p.Stdin = strings.NewReader("first\nsecond\n")
							runClient(t, p)
							s.expectLine(t, topic+" first")
							s.expectLine(t, topic+" second")
						case "message_expiry":
							mpub(t, "-t", topic, "-q", "1", "-r", "-m", "soon", "-D", "publish", "message-expiry-interval", "60")
							out, err := exec.Command(sub, with("-t", topic, "-C", "1", "-W", "5", "-F", "%E")...).CombinedOutput()
							if n, perr := strconv.Atoi(strings.TrimSpace(string(out))); err != nil || perr != nil || n <= 0 || n > 60 {
								t.Fatalf("message expiry interval: %v %q", err, out)
							}
							mpub(t, "-t", topic, "-q", "1", "-r", "-n")
						case "session_resume":
							id := cuniq("mosq-persistent")
							keep := []string{"-c", "-i", id, "-q", "1", "-t", topic}
							if v5 {
								keep = append(keep, "-x", "300")
							}
							runClient(t, exec.Command(sub, with(append(keep, "-E")...)...))
							mpub(t, "-t", topic, "-q", "1", "-m", "while away")
							out, err := exec.Command(sub, with(append(keep, "-C", "1", "-W", "5", "-F", "%p")...)...).CombinedOutput()
							if err != nil || strings.TrimSpace(string(out)) != "while away" {
								t.Fatalf("resumed session: %v: %q", err, out)
							}
						}
					})
				}
			})
		}
	}
}

// nextLine returns the subscriber's next line of output.
func (s *subscriber) nextLine(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			t.Fatal("subscriber exited")
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no output from the subscriber after 10s")
	}
	return ""
}

// mosquittoResponder answers requests on topic with "answer" on their
// response topic, with their correlation data (paho.golang over TCP).
func mosquittoResponder(t *testing.T, e *conformEnv, topic string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var c *paho.Client
	c = paho.NewClient(paho.ClientConfig{Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			if pp := p.Packet.Properties; pp != nil && pp.ResponseTopic != "" {
				go c.Publish(context.Background(), &paho.Publish{Topic: pp.ResponseTopic, QoS: 1, Payload: []byte("answer"),
					Properties: &paho.PublishProperties{CorrelationData: pp.CorrelationData}})
			}
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: cuniq("responder"), KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("responder: %v", err)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}); <-c.Done() })
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
}
