package dashboard

import (
	"context"
	"net/http"

	"github.com/tether-iot/tether/devices"
)

// auditList is the body of GET /audit.
type auditList struct {
	Entries    []devices.AuditEntry `json:"entries"`
	NextCursor string               `json:"next_cursor"`
}

// listAudit: GET /audit?limit=&cursor=&action=&actor= → newest first.
func (a *API) listAudit(w http.ResponseWriter, r *http.Request) error {
	if a.audit == nil {
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "this server keeps no audit log"}
	}
	q, err := query(r, "limit", "cursor", "action", "actor")
	if err != nil {
		return err
	}
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	list, next, err := a.audit.List(r.Context(), devices.AuditQuery{
		Limit: limit, Cursor: q.Get("cursor"), Action: q.Get("action"), Actor: q.Get("actor"),
	})
	if err != nil {
		return registryError(err, "audit entry")
	}
	return writeJSON(w, http.StatusOK, auditList{Entries: list, NextCursor: next})
}

// record writes e to the audit log, if there is one: from the address the
// request came from and, unless e names one, by the request's caller. A
// failure is logged, not returned: the change it records has been made.
// Never put a secret in e.
func (a *API) record(r *http.Request, e devices.AuditEntry) {
	if a.audit == nil {
		return
	}
	if e.Actor == "" {
		id := identity(r)
		e.Actor, e.Via = id.Name, id.Via
	}
	e.Remote = a.clientIP(r)
	if err := a.audit.Add(context.WithoutCancel(r.Context()), e); err != nil {
		a.log.Error("api: audit", "action", e.Action, "error", err)
	}
}

// recordRefusal queues a refused login for the audit log without waiting
// (a flood of refusals drops entries rather than holding up the API).
func (a *API) recordRefusal(r *http.Request, name, reason string) {
	a.audit.Note(devices.AuditEntry{Action: devices.AuditLoginRefused, Actor: name, Via: "http",
		Remote: a.clientIP(r), Detail: reason})
}
