package dashboard

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/tether-iot/tether/devices"
)

// deviceList is the body of GET /devices.
type deviceList struct {
	Devices    []devices.Device `json:"devices"`
	NextCursor string           `json:"next_cursor"`
}

// deviceSecrets is the body of POST /devices/bulk, both ways.
type bulkRequest struct {
	Devices []devices.NewDevice `json:"devices"`
}

type bulkResponse struct {
	Devices []devices.DeviceSecret `json:"devices"`
}

// pathID returns the {id} of r's path, or a 404 when it cannot be a
// device id.
func pathID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !devices.ValidID(id) {
		return "", notFound("device")
	}
	return id, nil
}

// listDevices: GET /devices?status=&type=&label=&q=&limit=&cursor=
func (a *API) listDevices(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r, "status", "type", "label", "q", "limit", "cursor")
	if err != nil {
		return err
	}
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	switch q.Get("status") {
	case "", "online", "offline":
	default:
		return badRequest(codeInvalid, "status must be online or offline")
	}
	list, next, err := a.reg.ListDevices(r.Context(), devices.DeviceFilter{
		Status: q.Get("status"),
		Type:   q.Get("type"),
		Label:  q.Get("label"),
		Text:   q.Get("q"),
		Limit:  limit,
		Cursor: q.Get("cursor"),
	})
	if err != nil {
		return registryError(err, "device")
	}
	if list == nil {
		list = []devices.Device{}
	}
	return writeJSON(w, http.StatusOK, deviceList{Devices: list, NextCursor: next})
}

// createDevice: POST /devices {"id"?, "name", "type", "labels"} → 201, the
// device with its secret.
func (a *API) createDevice(w http.ResponseWriter, r *http.Request) error {
	var nd devices.NewDevice
	if err := decodeJSON(w, r, maxBody, &nd); err != nil {
		return err
	}
	d, secret, err := a.reg.CreateDevice(r.Context(), nd)
	if err != nil {
		return registryError(err, "device")
	}
	a.log.Info("api: device registered", "device", d.ID, "by", identity(r).Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditDeviceCreated, Target: d.ID})
	w.Header().Set("Location", APIPrefix+"/devices/"+url.PathEscape(d.ID))
	return writeJSON(w, http.StatusCreated, devices.DeviceSecret{Device: d, Secret: secret})
}

// createDevices: POST /devices/bulk {"devices":[...]} → 201, all of them
// with their secrets, or none registered.
func (a *API) createDevices(w http.ResponseWriter, r *http.Request) error {
	var req bulkRequest
	if err := decodeJSON(w, r, maxBulkBody, &req); err != nil {
		return err
	}
	switch {
	case len(req.Devices) == 0:
		return badRequest(codeInvalid, "devices must list at least one device")
	case len(req.Devices) > devices.MaxBulk:
		return &apiError{Status: http.StatusRequestEntityTooLarge, Code: codeTooLarge,
			Msg: fmt.Sprintf("at most %d devices per call", devices.MaxBulk)}
	}
	out, err := a.reg.CreateDevices(r.Context(), req.Devices)
	if err != nil {
		return registryError(err, "device")
	}
	a.log.Info("api: devices registered", "count", len(out), "by", identity(r).Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditDeviceCreated, Target: out[0].ID,
		Detail: fmt.Sprintf("bulk: %d devices, %s to %s", len(out), out[0].ID, out[len(out)-1].ID)})
	return writeJSON(w, http.StatusCreated, bulkResponse{Devices: out})
}

// getDevice: GET /devices/{id}.
func (a *API) getDevice(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	d, err := a.reg.Device(r.Context(), id)
	if err != nil {
		return registryError(err, "device")
	}
	ans := deviceAnswer{Device: d}
	if a.telemetry != nil {
		ns := notStored{NotStored: a.telemetry.NotStored(id)}
		if a.nodes != nil {
			for _, n := range a.nodes() {
				if n.Self {
					ns.Node = n.Name
				}
			}
		}
		ans.TelemetryNotStored = &ns
	}
	return writeJSON(w, http.StatusOK, ans)
}

// deviceAnswer is GET /devices/{id}'s answer: the device, and what
// telemetry.device_values_rate kept out of its history.
type deviceAnswer struct {
	devices.Device
	// TelemetryNotStored is absent when the server keeps no history.
	TelemetryNotStored *notStored `json:"telemetry_not_stored,omitempty"`
}

// notStored is the device's samples routed but not stored because it
// was over telemetry.device_values_rate, counted by the node that
// answers (the bound is per node) since it started: samples, last_at
// (to the second; null if none), since, and node (its name in a
// cluster).
type notStored struct {
	devices.NotStored
	Node string `json:"node,omitempty"`
}

// updateDevice: PATCH /devices/{id} {"name"?, "type"?, "labels"?,
// "enabled"?}; labels replaces the whole set.
func (a *API) updateDevice(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var p devices.DevicePatch
	if err := decodeJSON(w, r, maxBody, &p); err != nil {
		return err
	}
	d, err := a.reg.UpdateDevice(r.Context(), id, p)
	if err != nil {
		return registryError(err, "device")
	}
	a.log.Info("api: device updated", "device", d.ID, "by", identity(r).Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditDeviceUpdated, Target: d.ID, Detail: patchFields(p)})
	return writeJSON(w, http.StatusOK, d)
}

// deleteDevice: DELETE /devices/{id} → 204; the device is disconnected.
func (a *API) deleteDevice(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	if err := a.reg.DeleteDevice(r.Context(), id); err != nil {
		return registryError(err, "device")
	}
	a.log.Info("api: device deleted", "device", id, "by", identity(r).Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditDeviceDeleted, Target: id})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// rotateSecret: POST /devices/{id}/secret → the device with its new
// secret; the old one stops working and its connection is closed.
func (a *API) rotateSecret(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	if r.ContentLength > 0 {
		return badRequest(codeBadRequest, "this request takes no body")
	}
	d, secret, err := a.reg.RotateSecret(r.Context(), id)
	if err != nil {
		return registryError(err, "device")
	}
	a.log.Info("api: device secret rotated", "device", d.ID, "by", identity(r).Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditSecretRotated, Target: d.ID})
	return writeJSON(w, http.StatusOK, devices.DeviceSecret{Device: d, Secret: secret})
}

// patchFields names what a device patch changes, for the audit log:
// "name, enabled=false".
func patchFields(p devices.DevicePatch) string {
	var f []string
	if p.Name != nil {
		f = append(f, "name")
	}
	if p.Type != nil {
		f = append(f, "type")
	}
	if p.Labels != nil {
		f = append(f, "labels")
	}
	if p.Topics != nil {
		f = append(f, "topics")
	}
	if p.Enabled != nil {
		f = append(f, fmt.Sprintf("enabled=%t", *p.Enabled))
	}
	return strings.Join(f, ", ")
}
