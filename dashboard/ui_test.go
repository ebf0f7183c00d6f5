package dashboard

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/tether-iot/tether/devices"
)

func TestUIServesFiles(t *testing.T) {
	srv := httptest.NewServer(NewHandler(Options{UI: UI()}))
	defer srv.Close()
	tests := []struct {
		path, ctype, contains string
	}{
		{"/", "text/html; charset=utf-8", "<title>Tether</title>"},
		{"/index.html", "text/html; charset=utf-8", "js/app.js"},
		{"/css/app.css", "text/css; charset=utf-8", "prefers-color-scheme: dark"},
		{"/js/app.js", "text/javascript; charset=utf-8", "import"},
		{"/vendor/mqtt.min.js", "text/javascript; charset=utf-8", "mqtt"},
		{"/vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8", "uPlot"},
		{"/vendor/uPlot.min.css", "text/css; charset=utf-8", ".uplot"},
		{"/vendor/VERSIONS", "text/plain; charset=utf-8", "uplot"},
		{"/vendor/uPlot.LICENSE", "text/plain; charset=utf-8", "MIT"},
		{"/favicon.svg", "image/svg+xml", "<svg"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			res, err := http.Get(srv.URL + tt.path) // the transport asks for and undoes gzip
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d", res.StatusCode)
			}
			if got := res.Header.Get("Content-Type"); got != tt.ctype {
				t.Errorf("Content-Type %q, want %q", got, tt.ctype)
			}
			if !strings.Contains(string(body), tt.contains) {
				t.Errorf("body lacks %q", tt.contains)
			}
			if got := res.Header.Get("Content-Security-Policy"); got != ContentSecurityPolicy {
				t.Errorf("CSP %q", got)
			}
			if got := res.Header.Get("Cache-Control"); got != "no-cache" {
				t.Errorf("Cache-Control %q", got)
			}
			if res.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Error("no nosniff")
			}
		})
	}
}

func TestUIRevalidatesAndCompresses(t *testing.T) {
	srv := httptest.NewServer(UI())
	defer srv.Close()
	get := func(path string, hdr ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { res.Body.Close() })
		return res
	}
	// An explicit Accept-Encoding keeps the transport from asking for gzip
	// and undoing it behind our back.
	plain := get("/vendor/mqtt.min.js", "Accept-Encoding", "identity")
	etag := plain.Header.Get("ETag")
	if etag == "" || plain.Header.Get("Content-Encoding") != "" {
		t.Fatalf("plain: ETag %q, Content-Encoding %q", etag, plain.Header.Get("Content-Encoding"))
	}
	if res := get("/vendor/mqtt.min.js", "Accept-Encoding", "identity", "If-None-Match", etag); res.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: status %d, want 304", res.StatusCode)
	}
	gz := get("/vendor/mqtt.min.js", "Accept-Encoding", "br, gzip")
	if gz.Header.Get("Content-Encoding") != "gzip" || gz.Header.Get("ETag") == etag {
		t.Fatalf("gzip: Content-Encoding %q, ETag %q", gz.Header.Get("Content-Encoding"), gz.Header.Get("ETag"))
	}
	zr, err := gzip.NewReader(gz.Body)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil || int64(len(b)) != plain.ContentLength {
		t.Errorf("gunzipped %d bytes (%v), want %d", len(b), err, plain.ContentLength)
	}
	if res := get("/vendor/mqtt.min.js", "Accept-Encoding", "gzip;q=0"); res.Header.Get("Content-Encoding") != "" {
		t.Error("gzip;q=0 was answered with gzip")
	}
	for path, code := range map[string]int{"/nope.js": 404, "/js/": 404, "/../go.mod": 404} {
		if res := get(path); res.StatusCode != code {
			t.Errorf("%s: status %d, want %d", path, res.StatusCode, code)
		}
	}
	req, _ := http.NewRequest("POST", srv.URL+"/", nil)
	res, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: status %d, want 405", res.StatusCode)
	}
}

// TestUILoadsNothingFromOutside checks that no page, style or script of
// ours names an outside origin (the CSP would block it anyway).
func TestUILoadsNothingFromOutside(t *testing.T) {
	u := UI().(*ui)
	for name, f := range u.files {
		if strings.HasPrefix(name, "/vendor/") {
			continue // checked by hand when vendored; they name URLs in comments
		}
		body := strings.ReplaceAll(string(f.body), `xmlns="http://www.w3.org/2000/svg"`, "") // a name, not a load
		for _, bad := range []string{"http://", "https://", "//cdn", "@import"} {
			if strings.Contains(body, bad) {
				t.Errorf("%s contains %q", name, bad)
			}
		}
	}
}

// TestUIDeviceBoundsMatchServer: the device page's bounds on what a
// device publishes are the server's (devices.MaxDeviceMetrics metric
// names, string values of devices.MaxMetricString), so the page shows all
// that is stored and never more than that.
func TestUIDeviceBoundsMatchServer(t *testing.T) {
	b, err := web.ReadFile("web/js/device.js")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{"MAX_METRICS": devices.MaxDeviceMetrics, "MAX_TEXT": devices.MaxMetricString} {
		m := regexp.MustCompile(`(?m)^const ` + name + ` = (\d+);`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("device.js has no const %s", name)
		}
		if got, _ := strconv.Atoi(string(m[1])); got != want {
			t.Errorf("device.js: %s = %d, the server's is %d", name, got, want)
		}
	}
}
