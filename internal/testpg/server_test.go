package testpg

import (
	"context"
	"database/sql"
	"testing"
)

func TestServer(t *testing.T) {
	s := New(t)
	u := s.NewDatabase(t)
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(context.Background(), "SELECT 40 + 2").Scan(&n); err != nil || n != 42 {
		t.Fatalf("got %d, %v", n, err)
	}
}
