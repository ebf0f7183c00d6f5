package simulator

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// maxErrorKinds bounds the kinds kept; later kinds count as "other".
const maxErrorKinds = 20

// maxErrorLen bounds the message kept of each kind, in bytes: room for a
// TLS failure's explanation and fix (internal/tlsexplain) under the
// layers of paho and WebSocket that wrap it.
const maxErrorLen = 600

// errorKinds keeps the first error of each kind, reports it as it happens
// and counts the rest, so that a run that fails 10,000 connects says why
// once instead of 10,000 times, or not at all.
type errorKinds struct {
	w      io.Writer // each kind's first error goes here as it happens; may be nil
	prefix string    // "sim" or "bench"

	// mu guards the fields below.
	mu    sync.Mutex
	order []string
	first map[string]string
	count map[string]int64
}

func newErrorKinds(w io.Writer, prefix string) *errorKinds {
	return &errorKinds{w: w, prefix: prefix, first: map[string]string{}, count: map[string]int64{}}
}

// note records err of operation op ("connect", "subscribe", "publish").
// An error's kind is op and its message: a device id is never part of the
// message of the errors that come in numbers (refused, unauthorised,
// timed out, TLS).
func (e *errorKinds) note(op string, err error) {
	if e == nil || err == nil {
		return
	}
	msg := err.Error()
	if len(msg) > maxErrorLen {
		cut := maxErrorLen
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "…"
	}
	kind := op + ": " + msg
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.first[kind]; !ok {
		if len(e.order) >= maxErrorKinds {
			kind = op + ": other errors"
		}
		if _, ok := e.first[kind]; !ok {
			e.order = append(e.order, kind)
			e.first[kind] = kind
			if e.w != nil {
				fmt.Fprintf(e.w, "%s: first %s error: %s\n", e.prefix, op, msg)
			}
		}
	}
	e.count[kind]++
}

// list returns each kind with its count, in the order first seen.
func (e *errorKinds) list() []string {
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]string, 0, len(e.order))
	for _, k := range e.order {
		out = append(out, fmt.Sprintf("%s (%d×)", k, e.count[k]))
	}
	return out
}

// String is list() on one line, for an error message.
func (e *errorKinds) String() string { return strings.Join(e.list(), "; ") }

// orTimeout is err, or errTimeout for a token that did not complete.
func orTimeout(err error) error {
	if err == nil {
		return errTimeout
	}
	return err
}
