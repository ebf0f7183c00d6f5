package simulator

import (
	"encoding/json"
	"slices"
	"strings"
	"time"
)

// command is the payload on devices/{id}/commands/{name} (SPEC §4).
type command struct {
	ID     string          `json:"id"`
	Params json.RawMessage `json:"params"`
}

// response is the payload on devices/{id}/responses/{cmdId} (SPEC §4).
type response struct {
	Status string `json:"status"` // ok or error
	Result any    `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
}

// doneCommands is how many command ids a device remembers to recognise a
// command delivered again.
const doneCommands = 64

// command answers one command per the profile's Behaviour and returns a
// reboot's downtime when the command was a successful reboot.
func (d *device) command(name string, payload []byte) time.Duration {
	st := &d.fleet.stats
	var c command
	if err := json.Unmarshal(payload, &c); err != nil || c.ID == "" || strings.ContainsAny(c.ID, "/+#") {
		st.commandsReceived.Add(1)
		st.commandsIgnored.Add(1) // nowhere to answer
		d.fleet.logf("device %s: command %q without a usable id", d.cred.ID, name)
		return 0
	}
	if slices.Contains(d.done, c.ID) {
		st.commandsDuplicate.Add(1) // delivered again: already acted on
		return 0
	}
	if d.done = append(d.done, c.ID); len(d.done) > doneCommands {
		d.done = d.done[1:]
	}
	st.commandsReceived.Add(1)
	b := &d.prof.Commands
	roll := d.rng.Float64()
	if roll < b.IgnoreRatio {
		st.commandsIgnored.Add(1)
		return 0
	}
	if b.Delay > 0 {
		time.Sleep(d.jittered(b.Delay)) // bounded by Validate to a minute
	}
	if roll < b.IgnoreRatio+b.FailRatio {
		d.respond(c.ID, response{Status: "error", Error: "simulated failure"})
		return 0
	}
	switch name {
	case "reboot":
		downtime := d.jittered(b.RebootDowntime)
		d.respond(c.ID, response{Status: "ok", Result: map[string]any{"rebooting": true, "downtime_s": downtime.Seconds()}})
		return max(downtime, time.Millisecond)
	case "set":
		var params map[string]any
		if err := json.Unmarshal(c.Params, &params); err != nil || len(params) == 0 {
			d.respond(c.ID, response{Status: "error", Error: "set needs params: an object of settings"})
			return 0
		}
		d.applySettings(params)
		d.respond(c.ID, response{Status: "ok", Result: map[string]any{"applied": params}})
	case "ping":
		d.respond(c.ID, response{Status: "ok", Result: map[string]any{"pong": true, "uptime_s": int64(time.Since(d.started).Seconds())}})
	default:
		if slices.Contains(b.Accept, name) {
			d.respond(c.ID, response{Status: "ok", Result: map[string]any{"command": name}})
			return 0
		}
		d.respond(c.ID, response{Status: "error", Error: "unknown command " + name})
	}
	return 0
}

// respond publishes the answer to command id at QoS 1 and counts it.
func (d *device) respond(id string, r response) {
	if d.publish(d.topic("responses/"+id), r, 1) {
		if r.Status == "ok" {
			d.fleet.stats.commandsAnswered.Add(1)
		} else {
			d.fleet.stats.commandsFailed.Add(1)
		}
	}
}
