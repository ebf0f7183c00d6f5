package dashboard

import (
	"encoding/json"
	"net/http"
)

// patchTwinRequest is the body of PATCH /devices/{id}/twin.
type patchTwinRequest struct {
	Desired json.RawMessage `json:"desired"`
}

// getTwin: GET /devices/{id}/twin.
func (a *API) getTwin(w http.ResponseWriter, r *http.Request) error {
	if a.twins == nil {
		return unavailable("twins")
	}
	id, err := pathID(r)
	if err != nil {
		return err
	}
	if _, err := a.reg.Device(r.Context(), id); err != nil {
		return registryError(err, "device")
	}
	tw, err := a.twins.Get(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, tw)
}

// patchTwin: PATCH /devices/{id}/twin with {"desired":{...}}, a merge
// (null removes a key). It bumps the desired version and publishes the
// retained devices/{id}/twin/desired.
func (a *API) patchTwin(w http.ResponseWriter, r *http.Request) error {
	if a.twins == nil {
		return unavailable("twins")
	}
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var req patchTwinRequest
	if err := decodeJSON(w, r, maxBody, &req); err != nil {
		return err
	}
	if len(req.Desired) == 0 {
		return badRequest(codeInvalid, `the body must be {"desired":{...}}`)
	}
	if _, err := a.reg.Device(r.Context(), id); err != nil {
		return registryError(err, "device")
	}
	tw, err := a.twins.SetDesired(r.Context(), id, req.Desired)
	if err != nil {
		return registryError(err, "twin")
	}
	return writeJSON(w, http.StatusOK, tw)
}
