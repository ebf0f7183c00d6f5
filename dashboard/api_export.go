package dashboard

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/tether-iot/tether/devices"
)

// ExportFormat names the layout of GET /devices/{id}/export.
const ExportFormat = "tether.device-export.v1"

// exportSession is the device's MQTT session: its connection, when it is
// connected, and its persistent session with the offline queue, when it
// has one.
type exportSession struct {
	ClientID        string     `json:"client_id"`
	Online          bool       `json:"online"`
	Transport       string     `json:"transport"`
	Remote          string     `json:"remote"`
	ProtocolVersion int        `json:"protocol_version"`
	ConnectedSince  *time.Time `json:"connected_since"`
	Persistent      bool       `json:"persistent"`
	Queued          int        `json:"queued"`
	Dropped         int64      `json:"dropped"`
	ExpiresAt       *time.Time `json:"expires_at"`
}

// exportDevice: GET /devices/{id}/export (admin). Everything stored about
// the device, its secret excepted, as one JSON document:
//
//	{"format","exported_at","exported_by","device","twin","session",
//	 "commands":[...],"audit":[...],"telemetry":[...]}
//
// audit holds the audit log's entries by or about the device (its export
// among them), newest first. Commands, audit entries and telemetry are
// written row by row as they are read, a page
// at a time, so a device with millions of points is never held in memory.
// A failure once the document has begun cuts it short: the client sees
// JSON that does not parse, never a document that looks complete.
func (a *API) exportDevice(w http.ResponseWriter, r *http.Request) error {
	if a.telemetry == nil || a.commands == nil || a.twins == nil {
		return unavailable("device data")
	}
	id, err := pathID(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	d, err := a.reg.Device(ctx, id)
	if err != nil {
		return registryError(err, "device")
	}
	tw, err := a.twins.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("export %s: twin: %w", id, err)
	}

	// The export is on the record before it is written, and in it.
	a.record(r, devices.AuditEntry{Action: devices.AuditDeviceExported, Target: id})

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s-export.json"`, id))
	w.WriteHeader(http.StatusOK)
	ew := &exportWriter{w: w, enc: json.NewEncoder(w)}
	ew.raw(`{"format":`)
	ew.value(ExportFormat)
	ew.raw(`,"exported_at":`)
	ew.value(a.now().UTC())
	ew.raw(`,"exported_by":`)
	ew.value(identity(r).Name)
	ew.raw(`,"device":`)
	ew.value(d)
	ew.raw(`,"twin":`)
	ew.value(tw)
	ew.raw(`,"session":`)
	ew.value(a.exportSession(id))

	ew.raw(`,"commands":[`)
	for cursor, first := "", true; ew.err == nil && (first || cursor != ""); first = false {
		var page []devices.Command
		if page, cursor, err = a.commands.List(ctx, id, 1000, cursor); err != nil {
			return fmt.Errorf("export %s: commands: %w", id, err)
		}
		for _, c := range page {
			ew.row(c)
		}
	}
	ew.raw(`],"audit":[`)
	for cursor, first := "", true; a.audit != nil && ew.err == nil && (first || cursor != ""); first = false {
		var page []devices.AuditEntry
		if page, cursor, err = a.audit.List(ctx, devices.AuditQuery{Limit: devices.MaxPage, Cursor: cursor, Subject: id}); err != nil {
			return fmt.Errorf("export %s: audit: %w", id, err)
		}
		for _, e := range page {
			ew.row(e)
		}
	}
	ew.raw(`],"telemetry":[`)
	ew.first = true
	if err := a.exportTelemetry(ew, r, id); err != nil {
		return err
	}
	ew.raw("]}\n")
	if ew.err != nil {
		return fmt.Errorf("export %s: write: %w", id, ew.err)
	}
	return nil
}

// exportTelemetry writes every stored point of id in time order, as the
// store decodes them, a query of devices.MaxTelemetryPoints at a time.
// Points of one millisecond may span two queries: the next starts at the
// last one's final millisecond and skips the points of it already written.
func (a *API) exportTelemetry(ew *exportWriter, r *http.Request, id string) error {
	from, to := time.UnixMilli(0), time.UnixMilli(1<<53) // every timestamp a device can give
	skip := 0
	for ew.err == nil {
		n, same := 0, 0
		var last time.Time
		err := a.telemetry.EachPoint(r.Context(), id, from, to, devices.MaxTelemetryPoints, func(p devices.Point) error {
			n++
			if p.TS.Equal(last) {
				same++
			} else {
				last, same = p.TS, 1
			}
			if n > skip {
				ew.row(p)
			}
			return ew.err
		})
		if err != nil {
			return fmt.Errorf("export %s: telemetry: %w", id, err)
		}
		switch {
		case n < devices.MaxTelemetryPoints:
			return nil
		case same == n:
			// A whole query in one millisecond: what lies beyond it in
			// that millisecond cannot be reached by time; go on after it.
			from, skip = last.Add(time.Millisecond), 0
		default:
			from, skip = last, same
		}
	}
	return nil
}

// exportSession describes the device's session, or nil when it has
// neither a connection nor a persistent session.
func (a *API) exportSession(id string) *exportSession {
	var s *exportSession
	if a.broker != nil {
		for _, c := range a.broker.Clients() {
			if c.ID == id {
				s = &exportSession{ClientID: id, Online: true, Transport: c.Transport, Remote: c.Remote,
					ProtocolVersion: c.ProtocolVersion, ConnectedSince: c.ConnectedSince}
			}
		}
	}
	if a.store != nil {
		for _, se := range a.store.Sessions() {
			if se.ClientID == id {
				if s == nil {
					s = &exportSession{ClientID: id, Online: se.Online}
				}
				s.Persistent, s.Queued, s.Dropped, s.ExpiresAt = true, se.Queued, se.Dropped, se.ExpiresAt
			}
		}
	}
	return s
}

// exportWriter writes a JSON document piece by piece; the first error
// stops all further writes.
type exportWriter struct {
	w     io.Writer
	enc   *json.Encoder
	first bool // the next row is the first of its array
	err   error
}

func (e *exportWriter) raw(s string) {
	if e.err == nil {
		_, e.err = io.WriteString(e.w, s)
	}
	e.first = true
}

func (e *exportWriter) value(v any) {
	if e.err == nil {
		e.err = e.enc.Encode(v)
	}
}

// row writes one element of the array being written.
func (e *exportWriter) row(v any) {
	if !e.first && e.err == nil {
		_, e.err = io.WriteString(e.w, ",")
	}
	e.first = false
	e.value(v)
}
