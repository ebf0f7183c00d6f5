package main

import (
	"context"
	"errors"
	"io"
)

// runBackup is not built yet.
func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("not implemented yet")
}
