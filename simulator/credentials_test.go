package simulator

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestReadCredentials(t *testing.T) {
	want := []Credential{{"d1", "s1"}, {"d2", "s2"}}
	for name, in := range map[string]string{
		"lines": "# fleet\n{\"id\":\"d1\",\"secret\":\"s1\"}\n\n{\"id\":\"d2\",\"secret\":\"s2\",\"name\":\"x\"}\n",
		"array": `  [{"id":"d1","secret":"s1"},{"id":"d2","secret":"s2"}]`,
	} {
		got, err := ReadCredentials(strings.NewReader(in))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %v, %v", name, got, err)
		}
	}
	for name, in := range map[string]string{
		"bad id":    `{"id":"a/b","secret":"s"}`,
		"duplicate": "{\"id\":\"a\"}\n{\"id\":\"a\"}",
		"bad json":  "{\"id\":\"a\"}\nnope",
		"array":     `[{"id":1}]`,
	} {
		if _, err := ReadCredentials(strings.NewReader(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestWriteCredentialsRoundTrip(t *testing.T) {
	creds := []Credential{{"a", "x"}, {"b.c-d_e", "y"}}
	var buf bytes.Buffer
	if err := WriteCredentials(&buf, creds); err != nil {
		t.Fatal(err)
	}
	got, err := ReadCredentials(&buf)
	if err != nil || !reflect.DeepEqual(got, creds) {
		t.Fatalf("round trip: %v, %v", got, err)
	}
}

func TestCredentialHidesSecret(t *testing.T) {
	c := Credential{ID: "dev", Secret: "hunter2"}
	if s := fmt.Sprint(c) + fmt.Sprintf("%v %s", c, c); strings.Contains(s, "hunter2") {
		t.Fatalf("secret printed: %s", s)
	}
}

func TestValidDeviceID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "A-z_0.9": true, strings.Repeat("x", 128): true,
		"": false, strings.Repeat("x", 129): false, "a/b": false, "a+": false, "a#": false, "é": false, "a b": false,
	} {
		if ValidDeviceID(id) != want {
			t.Errorf("ValidDeviceID(%q) != %v", id, want)
		}
	}
}
