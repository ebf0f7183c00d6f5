package configs

import (
	"bytes"
	"reflect"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParse: the loader never panics, and a configuration it accepts and
// validates survives a round trip through YAML unchanged.
func FuzzParse(f *testing.F) {
	f.Add(Sample)
	f.Add([]byte(""))
	f.Add([]byte("mqtt:\n  addr: off\n  shutdown_grace: 1s\n"))
	f.Add([]byte("http:\n  trusted_proxies: [10.0.0.0/8]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}
		if c.Validate() != nil {
			return
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshal a valid config: %v", err)
		}
		back, err := Parse(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("re-parse %q: %v", out, err)
		}
		if !reflect.DeepEqual(normalize(back), normalize(c)) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, back)
		}
	})
}

// normalize treats a nil and an empty list alike.
func normalize(c Config) Config {
	if len(c.HTTP.AllowedOrigins) == 0 {
		c.HTTP.AllowedOrigins = nil
	}
	if len(c.HTTP.TrustedProxies) == 0 {
		c.HTTP.TrustedProxies = nil
	}
	if len(c.MQTT.ProxyProtocolFrom) == 0 {
		c.MQTT.ProxyProtocolFrom = nil
	}
	return c
}
