package configs

import (
	"bytes"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// withDays rewrites, in the YAML text data, each value of a duration key
// written with days ("7d") into Go's notation ("168h0m0s"), in place, so
// that the decoder takes it and every line keeps its number. Anything it
// does not understand is left for the decoder to report.
func withDays(data []byte) []byte {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil {
		return data
	}
	var c Config
	keys := map[string]reflect.Value{}
	walk(reflect.ValueOf(&c).Elem(), "", keys)
	lines := bytes.Split(data, []byte("\n"))
	var visit func(n *yaml.Node, prefix string)
	visit = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, ch := range n.Content {
				visit(ch, prefix)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				key := prefix + k.Value
				if v.Kind == yaml.MappingNode {
					visit(v, key+".")
					continue
				}
				f, ok := keys[key]
				if !ok || f.Type() != durationType || v.Kind != yaml.ScalarNode || !days.MatchString(v.Value) {
					continue
				}
				d, err := ParseDuration(v.Value)
				if err != nil || v.Line < 1 || v.Line > len(lines) {
					continue
				}
				line := lines[v.Line-1]
				col := v.Column - 1
				if col < 0 || col > len(line) {
					continue
				}
				at := bytes.Index(line[col:], []byte(v.Value))
				if at < 0 {
					continue
				}
				at += col
				lines[v.Line-1] = append(append(append([]byte{}, line[:at]...), d.String()...), line[at+len(v.Value):]...)
			}
		}
	}
	visit(&doc, "")
	return bytes.Join(lines, []byte("\n"))
}

// yamlSyntaxErr matches the parser's "yaml: line 4: did not find ...".
var yamlSyntaxErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxLine corrects the line of a YAML syntax error. The parser names
// the line where the enclosing block began (a mapping two lines up for a
// mis-indented key); the line at fault is the first whose addition makes
// the text fail to parse. The error then quotes that line.
func syntaxLine(data []byte, err error) error {
	g := yamlSyntaxErr.FindStringSubmatch(err.Error())
	if g == nil {
		return err
	}
	from, _ := strconv.Atoi(g[1])
	lines := strings.Split(string(data), "\n")
	for n := max(from, 1); n <= len(lines); n++ {
		var doc yaml.Node
		if yaml.Unmarshal([]byte(strings.Join(lines[:n], "\n")+"\n"), &doc) != nil {
			return fmt.Errorf("line %d: %s:\n    %s", n, g[2], strings.TrimRight(lines[n-1], "\r"))
		}
	}
	return fmt.Errorf("line %d: %s", from, g[2])
}
