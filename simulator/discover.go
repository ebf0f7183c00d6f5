package simulator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DiscoverBroker asks a Tether server where its broker listens
// (GET /api/v1/broker, SPEC §6) and returns the broker URL for transport
// ("" means tcp if the server has it, else the first it has of ws, tls,
// wss). A listener bound to every interface (":1883") is reached at the
// server's host; WebSocket is the server's own /mqtt.
func DiscoverBroker(ctx context.Context, server, token, transport string, client *http.Client) (string, error) {
	u, err := url.Parse(strings.TrimRight(server, "/"))
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("discover broker: %q is not a server URL", server)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String()+"/api/v1/broker", nil)
	if err != nil {
		return "", fmt.Errorf("discover broker: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("discover broker: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("discover broker: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("discover broker: GET %s: %w", req.URL.Path, apiError(resp.StatusCode, data))
	}
	var info struct {
		Listeners []struct {
			Transport string `json:"transport"`
			Address   string `json:"address"`
		} `json:"listeners"`
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return "", fmt.Errorf("discover broker: decode response: %w", err)
	}
	have := map[string]string{}
	var names []string
	for _, l := range info.Listeners {
		have[l.Transport] = l.Address
		names = append(names, l.Transport)
	}
	pick := transport
	if pick == "" {
		for _, t := range []string{TransportTCP, TransportWS, TransportTLS, TransportWSS} {
			if _, ok := have[t]; ok {
				pick = t
				break
			}
		}
	}
	addr, ok := have[pick]
	if !ok {
		return "", fmt.Errorf("discover broker: %s has no %s listener (it has: %s)", server, orTCP(pick), strings.Join(names, ", "))
	}
	switch pick {
	case TransportWS, TransportWSS:
		// Served by the HTTP server: the one we asked if the scheme fits.
		if pick == TransportWS && u.Scheme == "http" || pick == TransportWSS && u.Scheme == "https" {
			return pick + "://" + u.Host + addr, nil
		}
		return "", fmt.Errorf("discover broker: %s is served on the server's %s address, not %s: give --broker", pick, map[string]string{TransportWS: "http", TransportWSS: "https"}[pick], server)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("discover broker: listener address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = u.Hostname()
	}
	return pick + "://" + net.JoinHostPort(host, port), nil
}

func orTCP(t string) string {
	if t == "" {
		return "MQTT"
	}
	return t
}
