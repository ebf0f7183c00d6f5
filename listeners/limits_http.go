package listeners

import (
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// HTTPLimit caps the size of HTTP request bodies. A request that declares
// a larger body is answered 413 at once; one that sends more than it
// declared (or streams without a length) fails its read at the limit, and
// the handler answers as it does for any unreadable body. Both are counted
// in tether_http_requests_limited_total.
type HTTPLimit struct {
	max      int64
	tooLarge prometheus.Counter
}

// NewHTTPLimit returns a limit of maxBody bytes per request body.
func NewHTTPLimit(maxBody int64) *HTTPLimit {
	return &HTTPLimit{max: maxBody, tooLarge: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_http_requests_limited_total",
		Help: "HTTP requests refused for a body over limits.http_max_body_bytes."})}
}

// Handler wraps next with the limit.
func (l *HTTPLimit) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > l.max {
			l.tooLarge.Inc()
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			_, _ = io.WriteString(w, `{"error":{"code":"body_too_large","message":"request body over `+
				strconv.FormatInt(l.max, 10)+` bytes"}}`+"\n")
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &countedBody{ReadCloser: http.MaxBytesReader(w, r.Body, l.max), l: l}
		}
		next.ServeHTTP(w, r)
	})
}

// countedBody counts the first read that hits the limit.
type countedBody struct {
	io.ReadCloser
	l       *HTTPLimit
	counted bool
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var mbe *http.MaxBytesError
	if err != nil && !b.counted && errors.As(err, &mbe) {
		b.counted = true
		b.l.tooLarge.Inc()
	}
	return n, err
}

// Describe implements prometheus.Collector.
func (l *HTTPLimit) Describe(ch chan<- *prometheus.Desc) { l.tooLarge.Describe(ch) }

// Collect implements prometheus.Collector.
func (l *HTTPLimit) Collect(ch chan<- prometheus.Metric) { l.tooLarge.Collect(ch) }
