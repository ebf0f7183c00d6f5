package dashboard

import (
	_ "embed"
	"net/http"
)

// openAPIDoc is the OpenAPI 3.1 description of the API: one operation per
// route of the route table (TestOpenAPIMatchesRoutes checks that they
// agree). Edit it when you add a route.
//
//go:embed openapi.json
var openAPIDoc []byte

// openAPI: GET /openapi.json.
func (a *API) openAPI(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(openAPIDoc)
	return nil
}
