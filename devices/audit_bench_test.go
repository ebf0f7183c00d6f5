package devices

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkAuditRefusedNewAddress is a refused login from an address not
// followed while the 10,000 followed addresses are all in their minute:
// it shares the others' allowance.
func BenchmarkAuditRefusedNewAddress(b *testing.B) {
	_, db := openTestRegistry(b)
	a, err := OpenAudit(context.Background(), db, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close() })
	now := time.Now()
	for i := range 10_000 {
		a.Note(AuditEntry{Time: now, Action: AuditLoginRefused, Via: "http", Remote: fmt.Sprintf("10.0.%d.%d", i/256, i%256)})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		a.Note(AuditEntry{Time: now, Action: AuditLoginRefused, Via: "http", Remote: fmt.Sprintf("10.1.%d.%d", i/256%256, i%256)})
	}
}
