package dashboard

import (
	"encoding/base64"
	"net/http"
	"sort"

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
	q, err := query(r, "limit", "cursor")
	if err != nil {
		return err
	}
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	after, err := idCursor(q.Get("cursor"))
	if err != nil {
		return err
	}
	if a.store == nil {
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "no session store is running"}
	}
	all := a.store.Sessions()
	sort.Slice(all, func(i, j int) bool { return all[i].ClientID < all[j].ClientID })
	out := sessionList{Sessions: []info.Session{}}
	for _, s := range all {
		if after != "" && s.ClientID <= after {
			continue
		}
		if len(out.Sessions) == limit {
			out.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(out.Sessions[limit-1].ClientID))
			break
		}
		out.Sessions = append(out.Sessions, s)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
