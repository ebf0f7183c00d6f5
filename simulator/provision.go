package simulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DeviceSpec is one device to register: what the bulk route takes.
type DeviceSpec struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Type   string            `json:"type"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Provisioner registers devices through Tether's HTTP API
// (POST /api/v1/devices/bulk, SPEC §6) and returns their secrets.
type Provisioner struct {
	Server    string       // base URL, e.g. http://127.0.0.1:8080
	Token     string       // API bearer token
	Client    *http.Client // nil means a client with a 60 s timeout
	BatchSize int          // devices per request; 0 means 500

	// mu guards registered: the ids of the devices this Provisioner
	// registered, for Remove.
	mu         sync.Mutex
	registered []string
}

// Registered returns the ids of the devices Provision registered.
func (p *Provisioner) Registered() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.registered...)
}

// Remove deletes the devices ids (DELETE /api/v1/devices/{id}), eight at
// a time, and returns how many it deleted and the first error. A device
// already gone counts as deleted.
func (p *Provisioner) Remove(ctx context.Context, ids []string) (int, error) {
	client := p.Client
	if client == nil {
		client = &http.Client{Timeout: 60 * time.Second}
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		n       int
		first   error
		next    atomic.Int64
		workers = min(8, len(ids))
	)
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) || ctx.Err() != nil {
					return
				}
				err := p.remove(ctx, client, ids[i])
				mu.Lock()
				if err == nil {
					n++
				} else if first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return n, first
}

func (p *Provisioner) remove(ctx context.Context, client *http.Client, id string) error {
	u := strings.TrimRight(p.Server, "/") + "/api/v1/devices/" + url.PathEscape(id)
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
	if err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	if p.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.Token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("delete %s: %w", id, apiError(resp.StatusCode, data))
	}
	return nil
}

// Provision registers specs in batches and returns one credential per
// spec, in the order of specs. It stops at the first failed batch; devices
// of earlier batches stay registered.
func (p *Provisioner) Provision(ctx context.Context, specs []DeviceSpec) ([]Credential, error) {
	batch := p.BatchSize
	if batch <= 0 {
		batch = 500
	}
	creds := make([]Credential, 0, len(specs))
	for start := 0; start < len(specs); start += batch {
		end := min(start+batch, len(specs))
		got, err := p.bulk(ctx, specs[start:end])
		if err != nil {
			return nil, fmt.Errorf("provision devices %d-%d of %d: %w", start+1, end, len(specs), err)
		}
		creds = append(creds, got...)
		p.mu.Lock()
		for _, c := range got {
			p.registered = append(p.registered, c.ID)
		}
		p.mu.Unlock()
	}
	return creds, nil
}

// bulk sends one bulk registration request.
func (p *Provisioner) bulk(ctx context.Context, specs []DeviceSpec) ([]Credential, error) {
	body, err := encodeBulkRequest(specs)
	if err != nil {
		return nil, err
	}
	url := strings.TrimRight(p.Server, "/") + "/api/v1/devices/bulk"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("bulk register: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if p.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.Token)
	}
	client := p.Client
	if client == nil {
		client = &http.Client{Timeout: 60 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bulk register: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("bulk register: read response: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("bulk register: %s", apiError(resp.StatusCode, data))
	}
	return decodeBulkResponse(specs, data)
}

// encodeBulkRequest is the request body of POST /devices/bulk:
// {"devices":[{"id","name","type","labels"}]}.
func encodeBulkRequest(specs []DeviceSpec) ([]byte, error) {
	body, err := json.Marshal(struct {
		Devices []DeviceSpec `json:"devices"`
	}{specs})
	if err != nil {
		return nil, fmt.Errorf("bulk register: encode request: %w", err)
	}
	return body, nil
}

// decodeBulkResponse reads {"devices":[{"id","secret",...}]} and returns
// the credentials in the order of specs. This and encodeBulkRequest are
// the only places that know the route's body shapes.
func decodeBulkResponse(specs []DeviceSpec, data []byte) ([]Credential, error) {
	var out struct {
		Devices []Credential `json:"devices"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("bulk register: decode response: %w", err)
	}
	byID := make(map[string]string, len(out.Devices))
	for _, d := range out.Devices {
		byID[d.ID] = d.Secret
	}
	creds := make([]Credential, len(specs))
	for i, s := range specs {
		secret, ok := byID[s.ID]
		if !ok || secret == "" {
			return nil, fmt.Errorf("bulk register: response has no secret for device %q", s.ID)
		}
		creds[i] = Credential{ID: s.ID, Secret: secret}
	}
	return creds, nil
}

// apiError renders an API error body {"error":{"code","message"}} (SPEC §6)
// or, failing that, the status.
func apiError(status int, body []byte) error {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && (e.Error.Code != "" || e.Error.Message != "") {
		return fmt.Errorf("%d %s: %s: %s", status, http.StatusText(status), e.Error.Code, e.Error.Message)
	}
	return errors.New(fmt.Sprint(status, " ", http.StatusText(status)))
}
