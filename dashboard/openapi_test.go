package dashboard

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"testing"
)

// TestOpenAPIMatchesRoutes walks the route table and openapi.json and
// fails on any operation one has and the other has not, or whose access
// level differs.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q", doc.OpenAPI)
	}
	inDoc := map[string]string{}
	for path, ops := range doc.Paths {
		for method, raw := range ops {
			if method == "parameters" || method == "summary" || method == "description" {
				continue
			}
			var op struct {
				OperationID string `json:"operationId"`
				Role        string `json:"x-tether-role"`
				Responses   map[string]json.RawMessage
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			if op.OperationID == "" || len(op.Responses) == 0 {
				t.Errorf("%s %s: no operationId or responses", method, path)
			}
			inDoc[strings.ToUpper(method)+" "+path] = op.Role
		}
	}
	a := &API{}
	inTable := map[string]string{}
	for _, rt := range a.routes() {
		role := rt.Role
		if role == public {
			role = "public"
		}
		key := rt.Method + " " + rt.Path
		if _, dup := inTable[key]; dup {
			t.Errorf("route %s twice in the table", key)
		}
		inTable[key] = role
	}
	var problems []string
	for k, role := range inTable {
		docRole, ok := inDoc[k]
		switch {
		case !ok:
			problems = append(problems, "route "+k+" is not in openapi.json")
		case docRole != role:
			problems = append(problems, "route "+k+": role "+role+" in the table, "+docRole+" in openapi.json")
		}
	}
	for k := range inDoc {
		if _, ok := inTable[k]; !ok {
			problems = append(problems, "openapi.json has "+k+", the route table has not")
		}
	}
	sort.Strings(problems)
	for _, p := range problems {
		t.Error(p)
	}
}

// TestOpenAPIRefsResolve checks every $ref in openapi.json points at
// something the document defines.
func TestOpenAPIRefsResolve(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if s, ok := c.(string); ok && k == "$ref" {
					var cur any = doc
					for _, part := range strings.Split(strings.TrimPrefix(s, "#/"), "/") {
						m, _ := cur.(map[string]any)
						cur = m[part]
					}
					if cur == nil {
						t.Errorf("$ref %s does not resolve", s)
					}
				}
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(doc)
}

func TestOpenAPIServed(t *testing.T) {
	e := newBareAPIEnv(t)
	res, body := e.do("GET", "/openapi.json", "", nil)
	e.mustStatus(res, body, http.StatusOK)
	if res.Header.Get("Content-Type") != "application/json" || string(body) != string(openAPIDoc) {
		t.Fatalf("served %s", res.Header.Get("Content-Type"))
	}
}
