package configs

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// yamlLineErr matches one of yaml.TypeError's messages: "line 12: ...".
var yamlLineErr = regexp.MustCompile(`^line (\d+): (.*)$`)

// unknownField matches yaml's message for a key that Config lacks.
var unknownField = regexp.MustCompile(`^field (\S+) not found in type`)

// badDuration matches yaml's message for a duration that does not parse.
var badDuration = regexp.MustCompile("^cannot unmarshal !!\\w+ `(.*)` into time.Duration$")

// nameKeys rewrites a yaml.TypeError so that each message names the dotted
// key on its line; other errors are returned as they are.
func nameKeys(data []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil {
		return err
	}
	keys := map[int]string{}
	var walkNode func(n *yaml.Node, prefix string)
	walkNode = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walkNode(c, prefix)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				key := prefix + k.Value
				keys[k.Line] = key
				if v.Line != k.Line {
					keys[v.Line] = key
				}
				walkNode(v, key+".")
			}
		case yaml.SequenceNode:
			for _, c := range n.Content {
				if _, ok := keys[c.Line]; !ok {
					keys[c.Line] = strings.TrimSuffix(prefix, ".")
				}
				walkNode(c, prefix)
			}
		}
	}
	walkNode(&doc, "")
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		g := yamlLineErr.FindStringSubmatch(m)
		if g == nil {
			msgs = append(msgs, m)
			continue
		}
		line, _ := strconv.Atoi(g[1])
		key, ok := keys[line]
		if !ok {
			msgs = append(msgs, m)
			continue
		}
		msg := g[2]
		if unknownField.MatchString(msg) {
			msg = "unknown key (see configs/tether.yaml for every key)"
		}
		if d := badDuration.FindStringSubmatch(msg); d != nil {
			msg = fmt.Sprintf("%q is not a duration such as 10s, 5m, 12h or 7d", d[1])
		}
		msgs = append(msgs, fmt.Sprintf("%s (line %d): %s", key, line, msg))
	}
	return errors.New(strings.Join(msgs, "\n"))
}
