package dashboard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Request body limits.
const (
	// maxBody bounds an ordinary request body.
	maxBody = 1 << 20
	// maxBulkBody bounds POST /devices/bulk.
	maxBulkBody = 16 << 20
	// maxPage is the largest page a list returns ("limit").
	maxPage = 1000
	// defaultPage is the page size when "limit" is not given.
	defaultPage = 100
)

// decodeJSON reads r's body into v (a pointer to a struct) strictly: the
// Content-Type must be application/json (415), the body at most limit
// bytes (413), exactly one JSON object (400) with no field v does not
// have (400). Use it for every
// request body, so bad input is refused before anything is stored.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return &apiError{Status: http.StatusUnsupportedMediaType, Code: codeMediaType,
			Msg: "the body must be JSON, with Content-Type: application/json"}
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return jsonError(err, limit)
	}
	if b := bytes.TrimLeft(raw, " \t\r\n"); len(b) > 0 && b[0] != '{' {
		return badRequest(codeBadRequest, "the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, limit)
	}
	// Exactly one value: anything after it but white space is an error.
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return badRequest(codeBadRequest, "the body must hold exactly one JSON value")
	}
	return nil
}

// jsonError says what is wrong with a body that did not decode, without
// echoing the body.
func jsonError(err error, limit int64) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var big *http.MaxBytesError
	switch {
	case errors.As(err, &big):
		return &apiError{Status: http.StatusRequestEntityTooLarge, Code: codeTooLarge,
			Msg: fmt.Sprintf("the body is larger than %d bytes", min(big.Limit, limit))}
	case errors.Is(err, io.EOF):
		return badRequest(codeBadRequest, "the body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest(codeBadRequest, "the body is not valid JSON: it ends too soon")
	case errors.As(err, &syn):
		return badRequest(codeBadRequest, "the body is not valid JSON (at byte %d)", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return badRequest(codeInvalid, "field %q must be %s", typ.Field, jsonKind(typ.Type.Kind().String()))
		}
		return badRequest(codeBadRequest, "the body must be a JSON %s", jsonKind(typ.Type.Kind().String()))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return badRequest(codeInvalid, "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return badRequest(codeBadRequest, "the body is not valid JSON")
}

// jsonKind names a Go kind the way a JSON user would.
func jsonKind(k string) string {
	switch k {
	case "struct", "map":
		return "object"
	case "slice", "array":
		return "array"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	}
	if strings.HasPrefix(k, "int") || strings.HasPrefix(k, "uint") || strings.HasPrefix(k, "float") {
		return "a number"
	}
	return k
}

// query reads a request's query parameters, refusing any not in allowed
// (a typo in a filter must not silently list everything).
func query(r *http.Request, allowed ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequest(codeBadRequest, "malformed query string")
	}
	for k, vs := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || a == k
		}
		if !ok {
			return nil, badRequest(codeInvalid, "unknown query parameter %q", k)
		}
		if len(vs) > 1 {
			return nil, badRequest(codeInvalid, "query parameter %q given more than once", k)
		}
	}
	return q, nil
}

// pageLimit reads "limit": defaultPage when absent, else 1..maxPage.
func pageLimit(q url.Values) (int, error) {
	s := q.Get("limit")
	if s == "" {
		return defaultPage, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxPage {
		return 0, badRequest(codeInvalid, "limit must be a whole number from 1 to %d", maxPage)
	}
	return n, nil
}
