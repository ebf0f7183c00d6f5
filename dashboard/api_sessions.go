package dashboard

import (
	"net/http"

	"github.com/tether-iot/tether/broker/info"
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
	writeJSON(w, http.StatusOK, out)
	return nil
}
