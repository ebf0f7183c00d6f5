package main

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
)

// TestListenErrorWraps: a listener's bind error keeps net.Listen's error
// underneath its explanation, so callers can tell an address in use
// (errors.Is) and read which listener failed (errors.As).
func TestListenErrorWraps(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	ln, err := net.Listen("tcp", busy.Addr().String())
	if err == nil {
		ln.Close()
		t.Fatal("a second listener bound the same address")
	}
	e := listenError("http", "http.addr", busy.Addr().String(), err)
	if !errors.Is(e, syscall.EADDRINUSE) {
		t.Errorf("errors.Is(%v, EADDRINUSE) is false", e)
	}
	var le *listenerError
	if !errors.As(e, &le) || le.key != "http.addr" {
		t.Errorf("errors.As: %v %+v", e, le)
	}
	for _, want := range []string{"address already in use", "--http-addr", "TETHER_HTTP_ADDR", "http.addr in the configuration file"} {
		if !strings.Contains(e.Error(), want) {
			t.Errorf("%q lacks %q", e, want)
		}
	}
}
