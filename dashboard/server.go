package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
)

// Options are the parts the HTTP handler serves. Nil parts are not served.
type Options struct {
	// MQTT is the MQTT-over-WebSocket handler, mounted at /mqtt.
	MQTT http.Handler
	// Metrics is the Prometheus handler, mounted at /metrics.
	Metrics http.Handler
	// API is the JSON API, mounted under /api/v1/.
	API http.Handler
	// UI is the web UI, mounted at /.
	UI http.Handler
	// Ready reports why the process cannot serve (nil when it can).
	Ready func() error
	// Warnings, if set, lists what an operator should know while the
	// process can serve (a bound nearly reached); /readyz shows them.
	Warnings func() []string
	// Logger receives request errors; nil means slog.Default().
	Logger *slog.Logger
	// HTTPMetrics, when set, counts requests and their latency by route.
	HTTPMetrics *HTTPMetrics
}

// NewHandler returns the handler for an HTTP or HTTPS listener.
func NewHandler(o Options) http.Handler {
	mux := http.NewServeMux()
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	reply := func(w http.ResponseWriter, r *http.Request, code int, v any) {
		if err := writeJSON(w, code, v); err != nil {
			log.Error("http: request failed", "path", r.URL.Path, "error", err)
		}
	}
	if o.MQTT != nil {
		mux.Handle("/mqtt", o.MQTT)
	}
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		reply(w, r, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if o.Ready != nil {
			if err := o.Ready(); err != nil {
				reply(w, r, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": err.Error()})
				return
			}
		}
		if o.Warnings != nil {
			if ws := o.Warnings(); len(ws) > 0 {
				reply(w, r, http.StatusOK, map[string]any{"status": "ready", "warnings": ws})
				return
			}
		}
		reply(w, r, http.StatusOK, map[string]string{"status": "ready"})
	})
	if o.API != nil {
		mux.Handle("/api/v1/", o.API)
	}
	if o.UI != nil {
		mux.Handle("/", o.UI)
	} else {
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = w.Write([]byte("Tether is running. MQTT over WebSocket: /mqtt. Metrics: /metrics.\n"))
		})
	}
	if o.HTTPMetrics != nil {
		return securityHeaders(o.HTTPMetrics.handler(mux))
	}
	return securityHeaders(mux)
}

// securityHeaders sets the headers every response carries.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("X-Frame-Options", "DENY")
		next.ServeHTTP(w, r)
	})
}

// writeJSON answers with status code and v as JSON. v is encoded before
// anything is sent, so that a value that does not encode (a NaN or an
// infinite float, a failing MarshalJSON) is never a success with a body
// cut short or empty: the answer is then the API's 500 (code "internal")
// and the error returned, an *encodeError, says why without v's data, for
// the caller to log (an API handler returns it: wrap logs it).
//
// The encoding is held whole before it is sent, as encoding/json's
// Encoder held it anyway: the largest answers (telemetry: up to
// devices.MaxTelemetryPoints points or MaxTelemetryBuckets buckets; lists:
// up to maxPage entries; POST /devices/bulk: as many as its body bounds)
// take one more copy of their body for as long as it is written. The
// answers with no bound, GET /devices/{id}/export and CSV, are streamed
// without it.
func writeJSON(w http.ResponseWriter, code int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		err = &encodeError{cause: err}
		code, body = http.StatusInternalServerError, internalErrorJSON
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(body)
	_, _ = w.Write([]byte{'\n'})
	return err
}

// encodeError is a value writeJSON could not encode (and answered 500
// for instead).
type encodeError struct{ cause error }

// Error names what failed without the value: json's own message quotes
// it ("unsupported value: +Inf") or a marshaler's error, which may quote
// a device's data.
func (e *encodeError) Error() string {
	var val *json.UnsupportedValueError
	var typ *json.UnsupportedTypeError
	var mar *json.MarshalerError
	switch {
	case errors.As(e.cause, &val):
		return "response not encoded: a NaN or infinite number (or a cycle)"
	case errors.As(e.cause, &typ):
		return "response not encoded: unsupported type " + typ.Type.String()
	case errors.As(e.cause, &mar):
		return "response not encoded: the marshaler of " + mar.Type.String() + " failed"
	}
	return fmt.Sprintf("response not encoded: %T", e.cause)
}
