package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"time"

	"github.com/tether-iot/tether/devices"
)

type commandList struct {
	Commands   []devices.Command `json:"commands"`
	NextCursor string            `json:"next_cursor"`
}

// sendCommandRequest is the body of POST /devices/{id}/commands.
type sendCommandRequest struct {
	Name    string          `json:"name"`
	Params  json.RawMessage `json:"params"`
	Timeout float64         `json:"timeout"` // seconds; 0 means the default
	Wait    bool            `json:"wait"`
}

// listCommands: GET /devices/{id}/commands?limit=&cursor=, newest first.
func (a *API) listCommands(w http.ResponseWriter, r *http.Request) error {
	if a.commands == nil {
		return unavailable("commands")
	}
	id, err := pathID(r)
	if err != nil {
		return err
	}
	q, err := query(r, "limit", "cursor")
	if err != nil {
		return err
	}
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	if _, err := a.reg.Device(r.Context(), id); err != nil {
		return registryError(err, "device")
	}
	list, next, err := a.commands.List(r.Context(), id, limit, q.Get("cursor"))
	if err != nil {
		return registryError(err, "command")
	}
	return writeJSON(w, http.StatusOK, commandList{Commands: list, NextCursor: next})
}

// sendCommand: POST /devices/{id}/commands. Without wait it answers 202
// with the pending command; with wait it answers 200 once the command has
// its outcome, or has expired at its timeout.
func (a *API) sendCommand(w http.ResponseWriter, r *http.Request) error {
	if a.commands == nil {
		return unavailable("commands")
	}
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var req sendCommandRequest
	if err := decodeJSON(w, r, maxBody, &req); err != nil {
		return err
	}
	if req.Timeout < 0 || math.IsNaN(req.Timeout) || req.Timeout > devices.MaxCommandTimeout.Seconds() {
		return badRequest(codeInvalid, "timeout must be between 1 and %d seconds", int(devices.MaxCommandTimeout.Seconds()))
	}
	if _, err := a.reg.Device(r.Context(), id); err != nil {
		return registryError(err, "device")
	}
	nc := devices.NewCommand{DeviceID: id, Name: req.Name, Params: req.Params,
		Timeout: time.Duration(req.Timeout * float64(time.Second))}
	cmd, err := a.commands.Send(r.Context(), nc)
	if err != nil {
		if cmd.ID == "" {
			return registryError(err, "command")
		}
		a.log.Warn("command stored but not published", "command", cmd.ID, "device", id, "error", err)
	}
	if !req.Wait {
		return writeJSON(w, http.StatusAccepted, cmd)
	}
	ctx, cancel := context.WithDeadline(r.Context(), cmd.ExpiresAt)
	defer cancel()
	got, err := a.commands.Wait(ctx, cmd.ID)
	if errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil {
		// Time is up: close it now rather than at the next sweep.
		got, err = a.commands.Expire(r.Context(), cmd.ID)
	}
	switch {
	case err == nil:
	case errors.Is(err, devices.ErrNotFound):
		// Deleted meanwhile: its device, or commands.max_per_device
		// newer commands of its device.
		return registryError(err, "command")
	default:
		return err
	}
	return writeJSON(w, http.StatusOK, got)
}

// getCommand: GET /commands/{cmdId}.
func (a *API) getCommand(w http.ResponseWriter, r *http.Request) error {
	if a.commands == nil {
		return unavailable("commands")
	}
	id := r.PathValue("cmdId")
	if !devices.ValidID(id) {
		return notFound("command")
	}
	cmd, err := a.commands.Get(r.Context(), id)
	if err != nil {
		return registryError(err, "command")
	}
	return writeJSON(w, http.StatusOK, cmd)
}
