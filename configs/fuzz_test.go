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

// normalize treats a nil and an empty list alike, in every field: YAML
// writes both as [], and `rules:` with no value parses to nil (a fuzzed
// input found it in auth.rules, which the list of fields here missed).
func normalize(c Config) Config {
	nilEmpty(reflect.ValueOf(&c).Elem())
	return c
}

func nilEmpty(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				nilEmpty(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 {
			v.SetZero()
			return
		}
		for i := range v.Len() {
			nilEmpty(v.Index(i))
		}
	}
}
