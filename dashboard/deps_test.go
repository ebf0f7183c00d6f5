package dashboard

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoEngineDependency: the dashboard and API depend on small
// interfaces (engine.go) and plain types (broker/info), never on the MQTT
// engine, the broker's assembly, the listeners or the cluster; what it
// needs of them, cmd/tether wires.
func TestNoEngineDependency(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch {
		case strings.Contains(pkg, "mochi-mqtt"),
			pkg == "github.com/tether-iot/tether/broker",
			pkg == "github.com/tether-iot/tether/listeners",
			pkg == "github.com/tether-iot/tether/cluster",
			strings.Contains(pkg, "nats-io"):
			t.Errorf("dashboard depends on %s", pkg)
		}
	}
}
