package dashboard

import (
	"encoding/base64"
	"net/http"
	"sort"

	"github.com/tether-iot/tether/broker/info"
)

// clientList is the body of GET /clients.
type clientList struct {
	Clients    []info.Client `json:"clients"`
	NextCursor string        `json:"next_cursor"`
}

// listClients: GET /clients?limit=&cursor= lists the connected MQTT
// clients (not the broker's own inline client) ordered by client id.
func (a *API) listClients(w http.ResponseWriter, r *http.Request) error {
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
	if a.broker == nil {
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "no broker is running"}
	}
	all := a.broker.Clients()
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	out := clientList{Clients: []info.Client{}}
	for _, c := range all {
		if after != "" && c.ID <= after {
			continue
		}
		if len(out.Clients) == limit {
			out.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(out.Clients[limit-1].ID))
			break
		}
		out.Clients = append(out.Clients, c)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// idCursor decodes a cursor that holds the last id of the previous page.
func idCursor(c string) (string, error) {
	if c == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) == 0 {
		return "", badRequest(codeInvalid, "malformed cursor")
	}
	return string(b), nil
}
