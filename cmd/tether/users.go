package main

import (
	"context"
	"errors"
	"io"
)

// runUsers is not built yet.
func runUsers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("not implemented yet")
}
