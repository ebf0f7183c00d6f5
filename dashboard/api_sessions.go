package dashboard

import (
	"errors"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/tether-iot/tether/broker/info"
	"github.com/tether-iot/tether/devices"
)

// sessionList is the body of GET /sessions.
type sessionList struct {
	Sessions   []info.Session `json:"sessions"`
	NextCursor string         `json:"next_cursor"`
}

// listSessions: GET /sessions?limit=&cursor= lists the persistent MQTT
// sessions, online or not, with their queues, ordered by client id.
func (a *API) listSessions(w http.ResponseWriter, r *http.Request) error {
	page, next, err := idPage(r, func() ([]info.Session, error) {
		if a.store == nil {
			return nil, &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "no session store is running"}
		}
		return a.store.Sessions(), nil
	}, func(s info.Session) string { return s.ClientID })
	if err != nil {
		return err
	}
	out := sessionList{Sessions: page, NextCursor: next}
	return writeJSON(w, http.StatusOK, out)
}

// maxClientID is the longest client id MQTT can carry: a UTF-8 string's
// two-byte length.
const maxClientID = 65535

// validClientID reports whether id can be an MQTT client id: 1 to 65,535
// bytes of valid UTF-8 without U+0000 [MQTT-1.5.4-1] [MQTT-1.5.4-2], as
// the engine accepts them in a CONNECT.
func validClientID(id string) bool {
	return id != "" && len(id) <= maxClientID && utf8.ValidString(id) && !strings.ContainsRune(id, 0)
}

// deleteSession: DELETE /sessions/{clientId} → 204. The session under the
// client id, whoever owns it, is ended: a connected client is
// disconnected (MQTT 5: DISCONNECT 0x98 administrative action), and the
// session's subscriptions, queued and inflight messages and stored rows
// are purged before the answer, so that its next connection starts clean
// and a restart does not bring it back. Recorded in the audit log. The
// client id is percent-encoded in the path (a / as %2F).
func (a *API) deleteSession(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("clientId")
	if !validClientID(id) {
		return badRequest(codeInvalid, "a client id is 1 to %d bytes of UTF-8 without U+0000 (percent-encoded in the path)", maxClientID)
	}
	if a.purge == nil {
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "no broker is running"}
	}
	found, err := a.purge.DeleteSession(id)
	switch {
	case errors.Is(err, ErrNotEveryNode):
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable,
			Msg: "no node holds this session, but not every cluster node answered: try again", Err: err, RetryAfter: 2}
	case err != nil:
		return err
	case !found:
		return notFound("session")
	}
	a.log.Info("api: session deleted", "client", id, "by", identity(r).Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditSessionDeleted, Target: id})
	w.WriteHeader(http.StatusNoContent)
	return nil
}
