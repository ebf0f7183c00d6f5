package simulator

import (
	"os"
	"testing"
)

func TestReadMemory(t *testing.T) {
	m, err := readMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSSKB <= 0 || m.PeakKB < m.RSSKB {
		t.Fatalf("memory %+v", m)
	}
	if _, err := readMemory(-1); err == nil {
		t.Fatal("pid -1: no error")
	}
}
