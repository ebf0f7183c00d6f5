package simulator

import (
	"encoding/json"
	"reflect"
)

// followTwin applies a desired twin state (retained on
// devices/{id}/twin/desired, with "version") that is newer than the last
// one applied, and reports the settings it changed.
func (d *device) followTwin(payload []byte) {
	var desired map[string]any
	if err := json.Unmarshal(payload, &desired); err != nil {
		d.fleet.logf("device %s: desired twin is not a JSON object", d.cred.ID)
		return
	}
	version, _ := desired["version"].(float64)
	if version != 0 && version <= d.applied {
		return // seen already (the retained message comes again on every subscribe)
	}
	d.applied = version
	delete(desired, "version")
	changed := make(map[string]any)
	for k, v := range desired {
		if cur, ok := d.settings[k]; !ok || !reflect.DeepEqual(cur, v) {
			changed[k] = v
		}
	}
	if len(changed) == 0 {
		return
	}
	d.fleet.stats.twinUpdates.Add(1)
	d.applySettings(changed)
}

// applySettings merges changes into the settings (null removes a key) and
// publishes them, merged by the broker, to devices/{id}/twin/reported.
func (d *device) applySettings(changes map[string]any) {
	for k, v := range changes {
		if v == nil {
			delete(d.settings, k)
		} else {
			d.settings[k] = v
		}
	}
	d.reportTwin(changes)
}

// reportTwin publishes state to devices/{id}/twin/reported at QoS 1.
func (d *device) reportTwin(state map[string]any) {
	if len(state) == 0 {
		return
	}
	d.publish(d.topic("twin/reported"), state, 1)
}
