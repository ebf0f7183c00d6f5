package configs

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// envAliases are the short names SPEC §3 promises, beside the long ones
// that ApplyEnv derives from every key (mqtt.tls_addr -> TETHER_MQTT_TLS_ADDR).
var envAliases = map[string]string{
	"TETHER_ALLOW_ANONYMOUS": "auth.allow_anonymous",
	"TETHER_TLS_ADDR":        "mqtt.tls_addr",
	"TETHER_HTTPS_ADDR":      "http.https_addr",
	"TETHER_TLS_CERT":        "tls.cert",
	"TETHER_TLS_KEY":         "tls.key",
}

// EnvName returns the environment variable for a dotted key.
func EnvName(key string) string {
	return "TETHER_" + strings.ToUpper(strings.NewReplacer(".", "_").Replace(key))
}

// ApplyEnv overrides c with TETHER_* variables found by lookup (os.LookupEnv
// in production). A value that does not parse is an error naming the
// variable. Lists are comma-separated.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	keys := map[string]reflect.Value{}
	walk(reflect.ValueOf(c).Elem(), "", keys)
	apply := func(env, key string) error {
		v, ok := lookup(env)
		if !ok {
			return nil
		}
		if err := set(keys[key], v); err != nil {
			return fmt.Errorf("%s (%s): %w", env, key, err)
		}
		return nil
	}
	// Long names first, then the aliases, each in a fixed order, so that
	// an alias wins over its long name and errors come out the same way
	// every time.
	var errs []error
	for _, key := range sortedKeys(keys) {
		errs = append(errs, apply(EnvName(key), key))
	}
	for _, env := range sortedKeys(envAliases) {
		errs = append(errs, apply(env, envAliases[env]))
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Get returns the value at a dotted key in the form Set takes ("" for an
// empty list); false if there is no such key.
func (c *Config) Get(key string) (string, bool) {
	keys := map[string]reflect.Value{}
	walk(reflect.ValueOf(c).Elem(), "", keys)
	f, ok := keys[key]
	if !ok {
		return "", false
	}
	if f.Type() == durationType {
		return time.Duration(f.Int()).String(), true
	}
	if f.Kind() == reflect.Slice {
		parts := make([]string, f.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(f.Index(i).Interface())
		}
		return strings.Join(parts, ","), true
	}
	return fmt.Sprint(f.Interface()), true
}

// Set sets the value at a dotted key from its string form, as a flag would.
func (c *Config) Set(key, value string) error {
	keys := map[string]reflect.Value{}
	walk(reflect.ValueOf(c).Elem(), "", keys)
	f, ok := keys[key]
	if !ok {
		return fmt.Errorf("unknown key %q", key)
	}
	if err := set(f, value); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}

func walk(v reflect.Value, prefix string, out map[string]reflect.Value) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		key := prefix + name
		f := v.Field(i)
		if f.Kind() == reflect.Struct {
			walk(f, key+".", out)
			continue
		}
		out[key] = f
	}
}

var durationType = reflect.TypeOf(time.Duration(0))

func set(f reflect.Value, s string) error {
	s = strings.TrimSpace(s)
	if f.Type() == durationType {
		d, err := ParseDuration(s)
		if err != nil {
			return err
		}
		f.SetInt(int64(d))
		return nil
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, f.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not a whole number that fits", s)
		}
		f.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, f.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not a non-negative whole number that fits", s)
		}
		f.SetUint(n)
	case reflect.Slice:
		if f.Type().Elem().Kind() == reflect.Struct {
			// A list of objects (auth.rules, telemetry.topics): YAML
			// or JSON, as in the file.
			v := reflect.New(f.Type())
			dec := yaml.NewDecoder(strings.NewReader(s))
			dec.KnownFields(true)
			if err := dec.Decode(v.Interface()); err != nil {
				return fmt.Errorf("not a YAML or JSON list of objects: %v", err)
			}
			f.Set(v.Elem())
			return nil
		}
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		f.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("unsupported type %s", f.Type())
	}
	return nil
}
