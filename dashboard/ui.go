package dashboard

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
)

// web holds the dashboard: plain HTML, CSS and JavaScript modules, and the
// vendored MQTT.js and uPlot (see scripts/vendor-js.sh). There is no build
// step; the files are served as they are.
//
//go:embed web
var web embed.FS

// ContentSecurityPolicy is the policy every UI response carries: nothing
// is loaded from outside the binary, no inline script or style runs, and
// the page talks only to its own origin (the API, and /mqtt over ws or wss;
// CSP Level 3 'self' covers the WebSocket schemes of the same host).
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; font-src 'self'; connect-src 'self'; manifest-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// UI returns the handler for the embedded web dashboard, meant to be
// mounted at /. Each file is sent with its content type, an ETag and
// Cache-Control: no-cache, so browsers keep a copy and revalidate it
// cheaply (the file names carry no version); text files are sent gzipped
// to clients that accept it.
func UI() http.Handler {
	root, err := fs.Sub(web, "web")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	u := &ui{files: map[string]*uiFile{}}
	err = fs.WalkDir(root, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(root, p)
		if err != nil {
			return err
		}
		u.files["/"+p] = newUIFile(p, b)
		return nil
	})
	if err != nil {
		panic(err)
	}
	return u
}

type ui struct {
	files map[string]*uiFile
}

type uiFile struct {
	body, gz            []byte
	ctype, etag, gzEtag string
}

func newUIFile(name string, b []byte) *uiFile {
	sum := sha256.Sum256(b)
	f := &uiFile{body: b, ctype: contentType(name), etag: `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`}
	if len(b) > 1024 && (strings.HasPrefix(f.ctype, "text/") || strings.HasSuffix(f.ctype, "+xml")) {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = zw.Write(b)
		_ = zw.Close()
		if buf.Len() < len(b) {
			f.gz = buf.Bytes()
			f.gzEtag = strings.TrimSuffix(f.etag, `"`) + `-gz"`
		}
	}
	return f
}

func contentType(name string) string {
	switch ext := path.Ext(name); ext {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js", ".mjs":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	case ".json", ".webmanifest":
		return "application/json"
	case ".md", ".txt", "":
		return "text/plain; charset=utf-8"
	default:
		if t := mime.TypeByExtension(ext); t != "" {
			return t
		}
		return "text/plain; charset=utf-8" // LICENSE files
	}
}

func (u *ui) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p := r.URL.Path
	if p == "/" {
		p = "/index.html"
	}
	f := u.files[p]
	h := w.Header()
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	if f == nil {
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	}
	h.Set("Content-Type", f.ctype)
	h.Set("Cache-Control", "no-cache")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Add("Vary", "Accept-Encoding")
	body, etag := f.body, f.etag
	if f.gz != nil && acceptsGzip(r) {
		h.Set("Content-Encoding", "gzip")
		body, etag = f.gz, f.gzEtag
	}
	h.Set("ETag", etag)
	// ServeContent answers If-None-Match with 304 and handles HEAD.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

// acceptsGzip reports whether the request's Accept-Encoding allows gzip.
func acceptsGzip(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for _, e := range strings.Split(v, ",") {
			name, params, _ := strings.Cut(e, ";")
			name = strings.TrimSpace(name)
			if name != "gzip" && name != "*" {
				continue
			}
			q := strings.TrimSpace(params)
			if strings.HasPrefix(q, "q=") {
				if f, err := strconv.ParseFloat(q[2:], 64); err == nil && f == 0 {
					return false
				}
			}
			return true
		}
	}
	return false
}
