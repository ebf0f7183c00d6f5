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
	page, next, err := idPage(r, func() ([]info.Client, error) {
		if a.broker == nil {
			return nil, &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "no broker is running"}
		}
		return a.broker.Clients(), nil
	}, func(c info.Client) string { return c.ID })
	if err != nil {
		return err
	}
	out := clientList{Clients: page, NextCursor: next}
	return writeJSON(w, http.StatusOK, out)
}

// idPage is one page of all, ordered by id, as GET /clients and
// /sessions take it: ?limit= (pageLimit) and ?cursor= (the last id of the
// previous page); next is the cursor of the page after it, or "". The
// query is checked before source is asked for the items.
func idPage[T any](r *http.Request, source func() ([]T, error), id func(T) string) (page []T, next string, err error) {
	q, err := query(r, "limit", "cursor")
	if err != nil {
		return nil, "", err
	}
	limit, err := pageLimit(q)
	if err != nil {
		return nil, "", err
	}
	after, err := idCursor(q.Get("cursor"))
	if err != nil {
		return nil, "", err
	}
	all, err := source()
	if err != nil {
		return nil, "", err
	}
	sort.Slice(all, func(i, j int) bool { return id(all[i]) < id(all[j]) })
	page = []T{}
	for _, v := range all {
		if after != "" && id(v) <= after {
			continue
		}
		if len(page) == limit {
			return page, base64.RawURLEncoding.EncodeToString([]byte(id(page[limit-1]))), nil
		}
		page = append(page, v)
	}
	return page, "", nil
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
