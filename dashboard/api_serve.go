package dashboard

import (
	"errors"
	"net/http"
	"time"
)

// statusClientClosed is the status logged for a request whose client
// went away before its answer (nginx's 499); none is written.
const statusClientClosed = 499

// wrap turns a route into an http.Handler: authentication and role check,
// the handler, the error body and a debug line (no
// headers, no body: they may hold credentials).
func (a *API) wrap(rt route) http.Handler {
	label := rt.Method + " " + rt.Path
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		r2, err := a.authorize(rt, r)
		if err == nil {
			err = rt.Handle(sw, r2)
		}
		var enc *encodeError
		switch {
		case err == nil:
		case errors.As(err, &enc):
			// writeJSON has answered 500 instead.
			a.log.Error("api: request failed", "method", r.Method, "route", label, "path", r.URL.Path, "error", err)
		case r.Context().Err() != nil && errors.Is(err, r.Context().Err()):
			// The client went away (a command's wait it gave up on):
			// nothing failed here, and nobody reads an answer.
			sw.status = statusClientClosed
		case sw.status != 0:
			// The response has begun: too late for an error body.
			a.log.Error("api: request failed after the response began", "route", label, "error", err)
		default:
			a.writeError(sw, r, err)
		}
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		a.log.Debug("api request", "route", label, "path", r.URL.Path, "status", sw.status,
			"user", identity(r2).Name, "duration", time.Since(start))
	})
}

// notFound answers paths under /api/v1/ that no route matches: 405 with
// Allow when the path exists for other methods, else 404.
func (a *API) notFound(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, pattern := a.mux.Handler(r2); pattern != "" && pattern != APIPrefix+"/" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		for i, m := range allow {
			if i == 0 {
				w.Header().Set("Allow", m)
			} else {
				w.Header().Add("Allow", m)
			}
		}
		a.writeError(w, r, &apiError{Status: http.StatusMethodNotAllowed, Code: codeMethodNotAllowed,
			Msg: "method " + r.Method + " not allowed here"})
		return
	}
	a.writeError(w, r, notFound("route "+r.URL.Path))
}

// statusWriter remembers the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
