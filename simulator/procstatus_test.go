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
	// Burn CPU until the count moves (it moves in 10 ms ticks). A fixed
	// 50 ms of wall time was not enough on a loaded machine, where the
	// process may get less than a tick of CPU in it (CI: "cpu before
	// 540ms, after 50ms of work 540ms"); the deadline only bounds a broken
	// reader.
	after := before
	for deadline := time.Now().Add(20 * time.Second); after == before && time.Now().Before(deadline); {
		for end := time.Now().Add(20 * time.Millisecond); time.Now().Before(end); {
		}
		if after, err = readCPU(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	if before < 0 || after <= before {
		t.Fatalf("cpu before %v, after 20s of work %v", before, after)
	}
	if _, err := readCPU(-1); err == nil {
		t.Fatal("pid -1: no error")
	}
}
