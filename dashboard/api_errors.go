package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/tether-iot/tether/devices"
)

// apiError is an error with what the client may see: Status and Code pick
// the response, Msg is its message, and Err (never shown) is for the log.
// Handlers return one (usually through the helpers below); writeError
// turns it into the body {"error":{"code":...,"message":...}}.
type apiError struct {
	Status int
	Code   string
	Msg    string
	Err    error
	// RetryAfter, when positive, is sent as Retry-After (seconds).
	RetryAfter int
}

func (e *apiError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %s: %v", e.Status, e.Code, e.Msg, e.Err)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Msg)
}

func (e *apiError) Unwrap() error { return e.Err }

// Error codes of the API, the "code" of an error body.
const (
	codeBadRequest       = "bad_request"
	codeInvalid          = "invalid"
	codeUnauthorized     = "unauthorized"
	codeForbidden        = "forbidden"
	codeCSRF             = "csrf"
	codeNotFound         = "not_found"
	codeMethodNotAllowed = "method_not_allowed"
	codeConflict         = "conflict"
	codeTooLarge         = "body_too_large" // as listeners.HTTPLimit says it
	codeMediaType        = "unsupported_media_type"
	codeTooManyRequests  = "too_many_requests"
	codeBanned           = "banned"
	codeUnavailable      = "unavailable"
	codeInternal         = "internal"
)

// badRequest is a 400 with code and message msg.
func badRequest(code, format string, a ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: code, Msg: fmt.Sprintf(format, a...)}
}

// notFound is a 404 naming what was not found.
func notFound(what string) *apiError {
	return &apiError{Status: http.StatusNotFound, Code: codeNotFound, Msg: what + " not found"}
}

// forbidden is a 403.
func forbidden(msg string) *apiError {
	return &apiError{Status: http.StatusForbidden, Code: codeForbidden, Msg: msg}
}

// unauthorized is a 401: missing or bad credentials.
func unauthorized(msg string) *apiError {
	return &apiError{Status: http.StatusUnauthorized, Code: codeUnauthorized, Msg: msg}
}

// registryError maps an error of the devices package to the API error
// the client sees; what names the object ("device", "user") for 404 and
// 409. Errors it does not know become a 500 whose cause is only logged.
func registryError(err error, what string) error {
	var inv *devices.InvalidError
	var rate *devices.RateError
	var ae *apiError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &inv):
		return &apiError{Status: http.StatusBadRequest, Code: codeInvalid, Msg: inv.Error(), Err: err}
	case errors.As(err, &rate):
		return &apiError{Status: http.StatusTooManyRequests, Code: codeTooManyRequests, Msg: rate.Msg,
			RetryAfter: max(1, int(rate.RetryAfter.Seconds()+0.999)), Err: err}
	case errors.Is(err, devices.ErrNotFound):
		return &apiError{Status: http.StatusNotFound, Code: codeNotFound, Msg: what + " not found", Err: err}
	case errors.Is(err, devices.ErrLastAdmin):
		return &apiError{Status: http.StatusConflict, Code: codeConflict,
			Msg: "the last admin cannot be deleted or demoted: make another user admin first", Err: err}
	case errors.Is(err, devices.ErrConflict):
		return &apiError{Status: http.StatusConflict, Code: codeConflict,
			Msg: what + " id or name already taken (devices and users share one namespace)", Err: err}
	case errors.Is(err, devices.ErrUnauthorized):
		return &apiError{Status: http.StatusUnauthorized, Code: codeUnauthorized, Msg: "unauthorized", Err: err}
	}
	return err
}

// errorBody is the JSON of every error response (SPEC §6).
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError answers with err: an *apiError as it says, anything else as a
// 500 "internal error" whose cause goes to the log only, never to the
// client. It returns the status written.
func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) int {
	var ae *apiError
	if !errors.As(err, &ae) {
		a.log.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		ae = &apiError{Status: http.StatusInternalServerError, Code: codeInternal, Msg: msgInternal}
	} else if ae.Status >= 500 {
		a.log.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	}
	if ae.RetryAfter > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(ae.RetryAfter))
	}
	var body errorBody
	body.Error.Code, body.Error.Message = ae.Code, ae.Msg
	_ = writeJSON(w, ae.Status, body) // strings: it encodes
	return ae.Status
}

// msgInternal is the message of a 500, whose cause is only logged.
const msgInternal = "internal error"

// internalErrorJSON is the body of a 500, for writeJSON's answer when it
// cannot encode the one it was given.
var internalErrorJSON = func() []byte {
	var body errorBody
	body.Error.Code, body.Error.Message = codeInternal, msgInternal
	b, err := json.Marshal(body)
	if err != nil {
		panic(err)
	}
	return b
}()
