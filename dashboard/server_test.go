package dashboard

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/broker/info"
)

// TestWriteJSON: a value is sent as json.Encoder would send it; one that
// does not encode is never a success: the answer is the API's 500, and
// the error returned names the failure without the value.
func TestWriteJSON(t *testing.T) {
	type doc struct {
		Name string             `json:"name"`
		Avg  map[string]float64 `json:"avg"`
	}
	good := doc{Name: "<b>&", Avg: map[string]float64{"v": 1.7e308}}
	rec := httptest.NewRecorder()
	if err := writeJSON(rec, http.StatusCreated, good); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	if err := json.NewEncoder(&want).Encode(good); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusCreated || rec.Body.String() != want.String() || rec.Header().Get("Content-Type") != "application/json" ||
		rec.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("%d %v %q, want %q", rec.Code, rec.Header(), rec.Body, want.String())
	}

	for name, bad := range map[string]any{
		"+Inf":      doc{Name: "secret-ish", Avg: map[string]float64{"v": math.Inf(1)}},
		"NaN":       []float64{1, math.NaN()},
		"func":      map[string]any{"f": func() {}},
		"marshaler": map[string]any{"raw": json.RawMessage(`{"secret-ish"`)},
	} {
		rec := httptest.NewRecorder()
		err := writeJSON(rec, http.StatusOK, bad)
		var enc *encodeError
		if !errors.As(err, &enc) {
			t.Fatalf("%s: error %v, want an *encodeError", name, err)
		}
		if msg := err.Error(); strings.Contains(msg, "secret-ish") || strings.Contains(msg, enc.cause.Error()) {
			t.Errorf("%s: the error quotes the value: %s", name, msg)
		}
		var eb errorBody
		dec := json.NewDecoder(rec.Body)
		dec.DisallowUnknownFields()
		if rec.Code != http.StatusInternalServerError || dec.Decode(&eb) != nil || eb.Error.Code != codeInternal || eb.Error.Message != msgInternal ||
			rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%s: %d %q, want the 500 body", name, rec.Code, rec.Body)
		}
	}
}

// nanBroker is a broker whose figures are fine; the node list the API is
// given carries a rate that is not a number.
type nanBroker struct{}

func (nanBroker) Clients() []info.Client { return nil }
func (nanBroker) Figures() info.Figures  { return info.Figures{Version: "test"} }

// TestEncodeFailureOnRoute: a real route whose answer does not encode (a
// node's message rate NaN in GET /broker) answers 500 with the error body,
// counted as a 500, and logs why without the value.
func TestEncodeFailureOnRoute(t *testing.T) {
	rate := math.NaN()
	e := newAPIEnv(t, func(o *APIOptions) {
		o.Broker = nanBroker{}
		o.Nodes = func() []info.Node { return []info.Node{{Name: "n1", Self: true, MessagesPerSecond: rate}} }
	})
	m := NewHTTPMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	srv := httptest.NewServer(NewHandler(Options{API: e.api, HTTPMetrics: m}))
	t.Cleanup(srv.Close)
	e.srv = srv

	res, body := e.do("GET", "/broker", e.tokens["viewer"], nil)
	e.mustStatus(res, body, http.StatusInternalServerError)
	if eb := checkErrorBody(t, res, body); eb.Error.Code != codeInternal {
		t.Fatalf("body %s", body)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]float64{}
	for _, f := range fams {
		for _, c := range f.GetMetric() {
			if f.GetName() != "tether_http_requests_total" {
				continue
			}
			l := map[string]string{}
			for _, p := range c.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["route"] == "GET /api/v1/broker" {
				codes[l["code"]] += c.GetCounter().GetValue()
			}
		}
	}
	if len(codes) != 1 || codes["500"] != 1 {
		t.Errorf("requests counted by code: %v, want one 500", codes)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "response not encoded") || strings.Contains(logs, "unsupported value: NaN") {
		t.Errorf("log: %s", logs)
	}

	rate = 12.5
	res, body = e.do("GET", "/broker", e.tokens["viewer"], nil)
	e.mustStatus(res, body, http.StatusOK)
}
