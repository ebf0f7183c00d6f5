package broker

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/broker/rules"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/devices/topic"
)

// Rules are the operator's auth.rules, compiled: checked in order before
// the built-in rules, the first that covers a request decides it (SPEC
// §5). A rule covers a publish when its topic matches the topic, and a
// subscription when its topic matches every topic of the filter (the
// filter lies within it); a filter that only overlaps a rule's topic is
// left to the next rules, and the deliveries it brings are checked one
// topic at a time. Deliveries are "subscribe" access.
//
// Each connection keeps the rules that bind it (by who), with %c and %u
// put in, indexed by their first topic level (connACL): a check walks
// only the rules that can match, with no allocation.
type Rules struct {
	list []rule
}

type rule struct {
	allow    bool
	pub, sub bool
	topic    string
	whoKind  string
	whoName  string
}

// CompileRules checks and compiles auth.rules; the configuration's
// validation gives the same errors (rules.Check), naming each rule by
// index.
func CompileRules(rs []rules.Rule) (*Rules, error) {
	var errs []error
	rules.Check(rs, func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, a...)...))
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := &Rules{list: make([]rule, len(rs))}
	for i, r := range rs {
		kind, name := rules.SplitWho(r.Who)
		out.list[i] = rule{
			allow: r.Effect == "allow",
			pub:   r.Access == devices.AccessPublish || r.Access == devices.AccessAll,
			sub:   r.Access == devices.AccessSubscribe || r.Access == devices.AccessAll,
			topic: r.Topic, whoKind: kind, whoName: name,
		}
	}
	return out, nil
}

// Len is the number of rules.
func (rs *Rules) Len() int {
	if rs == nil {
		return 0
	}
	return len(rs.list)
}

// binds reports whether r applies to c (of device type typ).
func (r *rule) binds(c *conn, typ string) bool {
	switch r.whoKind {
	case rules.WhoAny:
		return true
	case rules.WhoAnonymous:
		return c.anonymous
	case rules.WhoRole:
		return !c.anonymous && c.id.Kind == devices.KindUser && c.id.Role == r.whoName
	case rules.WhoUser:
		return !c.anonymous && c.id.Kind == devices.KindUser && c.id.Name == r.whoName
	case rules.WhoDevice:
		return !c.anonymous && c.id.Kind == devices.KindDevice && c.id.Name == r.whoName
	case rules.WhoType:
		return !c.anonymous && c.id.Kind == devices.KindDevice && typ == r.whoName
	}
	return false
}

// expand puts the client id and the username into r's topic. A value
// that is empty or holds '/', '+' or '#' would change the filter's shape:
// an allow rule then does not bind the client, and a deny rule binds it
// with that level widened to '+'. So does a first level that the values
// would make "devices" or start with '$': a client id of "devices" must
// not turn an allow rule on %c/# into every device's topics.
func (r *rule) expand(clientID, username string) (string, bool) {
	if !strings.Contains(r.topic, "%") {
		return r.topic, true
	}
	levels := strings.Split(r.topic, "/")
	for i, l := range levels {
		if !strings.Contains(l, "%") {
			continue
		}
		cOK := !strings.Contains(l, "%c") || safeLevel(clientID)
		uOK := !strings.Contains(l, "%u") || safeLevel(username)
		if cOK && uOK && i == 0 {
			first := strings.NewReplacer("%c", clientID, "%u", username).Replace(l)
			cOK = first != "devices" && !strings.HasPrefix(first, "$")
		}
		if !cOK || !uOK {
			if r.allow {
				return "", false
			}
			levels[i] = "+"
			continue
		}
		levels[i] = strings.NewReplacer("%c", clientID, "%u", username).Replace(l)
	}
	return strings.Join(levels, "/"), true
}

func safeLevel(s string) bool { return s != "" && !strings.ContainsAny(s, "/+#") }

// ruleIndex is the rules binding one connection for one access, in
// order, with the positions of those whose topic starts with each literal
// level and of those starting with a wildcard.
type ruleIndex struct {
	list    []crule
	byFirst map[string][]int32
	wild    []int32
}

type crule struct {
	allow  bool
	levels []string
}

func (x *ruleIndex) add(allow bool, t string) {
	n := int32(len(x.list))
	levels := topic.Split(t, nil)
	x.list = append(x.list, crule{allow: allow, levels: levels})
	first := levels[0]
	if first == "+" || first == "#" {
		x.wild = append(x.wild, n)
		return
	}
	if x.byFirst == nil {
		x.byFirst = map[string][]int32{}
	}
	x.byFirst[first] = append(x.byFirst[first], n)
}

// decide returns the effect of the first rule whose topic covers filter
// (split in levels); matched is false when none does. A filter whose
// first level is a wildcard can lie only within rules that start with
// one.
func (x *ruleIndex) decide(filter []string) (allow, matched bool) {
	if len(x.list) == 0 {
		return false, false
	}
	first := filter[0]
	var lit []int32
	if first != "+" && first != "#" {
		lit = x.byFirst[first]
	}
	w := x.wild
	for len(lit) > 0 || len(w) > 0 {
		var i int32
		if len(w) == 0 || len(lit) > 0 && lit[0] < w[0] {
			i, lit = lit[0], lit[1:]
		} else {
			i, w = w[0], w[1:]
		}
		if r := &x.list[i]; topic.WithinLevels(filter, r.levels) {
			return r.allow, true
		}
	}
	return false, false
}

// connACL is what one connection may do beyond the fixed rules: the
// auth.rules that bind it, and a device's patterns (built-in and grants,
// with its id put in). It is rebuilt, never changed, when the rules are
// reloaded or the device's grants or type change.
type connACL struct {
	rules    *Rules // the rule set it was built from
	pubRules ruleIndex
	subRules ruleIndex
	pub, sub [][]string // split in levels
}

// aclBox holds a connection's connACL; mu serialises rebuilds.
type aclBox struct {
	mu sync.Mutex
	p  atomic.Pointer[connACL]
}

// SetRules replaces the auth rules; connections get them at their next
// check, none is dropped. Nil is no rules.
func (a *Auth) SetRules(rs *Rules) {
	a.rules.Store(rs)
	a.clients.Range(func(k, v any) bool {
		a.rebuild(v.(*conn))
		return true
	})
	a.sessions.Range(func(k, v any) bool {
		a.rebuild(v.(*conn))
		return true
	})
	a.log.Info("auth rules applied", "rules", rs.Len())
}

// deviceChanged rebuilds the access of device id's connection and
// offline session after its grants or type changed: it applies at once,
// without a reconnection.
func (a *Auth) deviceChanged(id string) {
	if v, ok := a.current.Load(id); ok {
		if c := a.conn(v.(*mqtt.Client)); c != nil {
			a.rebuild(c)
		}
	}
	if v, ok := a.sessions.Load(id); ok {
		a.rebuild(v.(*conn))
	}
}

// rebuild computes c's connACL from the rules and, for a device, its
// grants and type as they are now.
func (a *Auth) rebuild(c *conn) {
	if c.acl == nil {
		return
	}
	c.acl.mu.Lock()
	defer c.acl.mu.Unlock()
	rs := a.rules.Load()
	acl := &connACL{rules: rs}
	typ := ""
	if !c.anonymous && c.id.Kind == devices.KindDevice {
		var grants []devices.TopicGrant
		typ, grants, _ = a.reg.DeviceAccess(c.id.Name)
		pub, sub := devicePatterns(c.id.Name)
		for _, g := range grants {
			f, err := g.For(c.id.Name)
			if err != nil {
				continue // stored before the registry checked it
			}
			if g.Publish() {
				pub = append(pub, f)
			}
			if g.Subscribe() {
				sub = append(sub, f)
			}
		}
		acl.pub, acl.sub = splitAll(pub), splitAll(sub)
	}
	if rs != nil {
		user := ""
		if !c.anonymous {
			user = c.id.Name
		}
		for i := range rs.list {
			r := &rs.list[i]
			if !r.binds(c, typ) {
				continue
			}
			t, ok := r.expand(c.clientID, user)
			if !ok {
				continue
			}
			if r.pub {
				acl.pubRules.add(r.allow, t)
			}
			if r.sub {
				acl.subRules.add(r.allow, t)
			}
		}
	}
	c.acl.p.Store(acl)
}

// splitAll splits each filter in levels.
func splitAll(fs []string) [][]string {
	out := make([][]string, len(fs))
	for i, f := range fs {
		out[i] = topic.Split(f, nil)
	}
	return out
}

// newConn returns the hook's record of an authenticated identity (or an
// anonymous client) connecting with clientID, its access compiled.
func (a *Auth) newConn(id devices.Identity, anonymous bool, clientID string) *conn {
	c := &conn{id: id, anonymous: anonymous, clientID: clientID, acl: &aclBox{}}
	a.rebuild(c)
	return c
}

// fresh rebuilds c's access if the rules changed since it was built (a
// connection made while SetRules ran).
func (a *Auth) fresh(c *conn) {
	if c.acl != nil {
		if acl := c.acl.p.Load(); acl == nil || acl.rules != a.rules.Load() {
			a.rebuild(c)
		}
	}
}
