// Command mochi-bare is a bare mochi-mqtt v2 broker for benchmarks: one TCP
// listener, every client and topic allowed, nothing else (no auth, ACL,
// presence, history or persistence). scripts/bench-compare.sh runs it next
// to Tether and Mosquitto to measure what Tether's features cost.
//
// Usage: go run ./scripts/mochi-bare --addr 127.0.0.1:1885
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:1885", "TCP listener address")
	flag.Parse()
	if err := run(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "mochi-bare:", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	server := mqtt.New(&mqtt.Options{
		InlineClient: false,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err := server.AddHook(new(allowHook), nil); err != nil {
		return fmt.Errorf("add allow hook: %w", err)
	}
	if err := server.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})); err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	if err := server.Serve(); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	fmt.Fprintln(os.Stderr, "mochi-bare: listening on", addr)
	<-sigs
	if err := server.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// allowHook lets every client connect, publish and subscribe: mochi's
// auth.AllowHook, written out because that package pulls in
// gopkg.in/yaml.v3, which this module does not otherwise need.
type allowHook struct{ mqtt.HookBase }

func (h *allowHook) ID() string { return "allow-all" }

func (h *allowHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *allowHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *allowHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }
