package simulator

import (
	"os"
	"testing"
	"time"
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

func TestReadCPU(t *testing.T) {
	before, err := readCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn some 50 ms of CPU; the count moves in 10 ms ticks.
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	after, err := readCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if before < 0 || after <= before {
		t.Fatalf("cpu before %v, after 50ms of work %v", before, after)
	}
	if _, err := readCPU(-1); err == nil {
		t.Fatal("pid -1: no error")
	}
}
