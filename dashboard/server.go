package dashboard

import (
	"encoding/json"
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
	if o.MQTT != nil {
		mux.Handle("/mqtt", o.MQTT)
	}
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if o.Ready != nil {
			if err := o.Ready(); err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": err.Error()})
				return
			}
		}
		if o.Warnings != nil {
			if ws := o.Warnings(); len(ws) > 0 {
				writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "warnings": ws})
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
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

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
