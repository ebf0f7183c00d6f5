package simulator

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// Credential is one device identity: client id = username = ID, password =
// Secret.
type Credential struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
}

// String keeps the secret out of logs and error messages.
func (c Credential) String() string { return c.ID }

// LoadCredentials reads a credentials file (see ReadCredentials).
func LoadCredentials(path string) ([]Credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load credentials: %w", err)
	}
	defer f.Close()
	creds, err := ReadCredentials(f)
	if err != nil {
		return nil, fmt.Errorf("load credentials %s: %w", path, err)
	}
	return creds, nil
}

// ReadCredentials reads device credentials as a JSON array of
// {"id","secret"} objects or as JSON lines, one object a line (blank lines
// and lines starting with # are skipped). Every entry needs a valid device
// id; ids must be unique. Other fields are ignored, so the output of the
// bulk registration route can be used as it is.
func ReadCredentials(r io.Reader) ([]Credential, error) {
	data, err := io.ReadAll(io.LimitReader(r, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	trimmed := bytes.TrimSpace(data)
	var creds []Credential
	switch {
	case len(trimmed) > 0 && trimmed[0] == '[':
		if err := json.Unmarshal(trimmed, &creds); err != nil {
			return nil, fmt.Errorf("read credentials: JSON array: %w", err)
		}
	default:
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for line := 1; sc.Scan(); line++ {
			b := bytes.TrimSpace(sc.Bytes())
			if len(b) == 0 || b[0] == '#' {
				continue
			}
			var c Credential
			if err := json.Unmarshal(b, &c); err != nil {
				return nil, fmt.Errorf("read credentials: line %d: %w", line, err)
			}
			creds = append(creds, c)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read credentials: %w", err)
		}
	}
	seen := make(map[string]bool, len(creds))
	for i, c := range creds {
		if !ValidDeviceID(c.ID) {
			return nil, fmt.Errorf("read credentials: entry %d: invalid device id %q", i+1, c.ID)
		}
		if seen[c.ID] {
			return nil, fmt.Errorf("read credentials: entry %d: duplicate device id %q", i+1, c.ID)
		}
		seen[c.ID] = true
	}
	return creds, nil
}

// WriteCredentials writes creds as JSON lines, the format ReadCredentials
// reads back.
func WriteCredentials(w io.Writer, creds []Credential) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for _, c := range creds {
		if err := enc.Encode(c); err != nil {
			return fmt.Errorf("write credentials: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	return nil
}

// ValidDeviceID reports whether id is a device id per SPEC §4:
// [A-Za-z0-9._-]{1,128}.
func ValidDeviceID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
