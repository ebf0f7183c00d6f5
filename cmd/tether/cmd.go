package main

import (
	"context"
	"errors"
	"io"
)

// runCmd is not built yet.
func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("not implemented yet")
}
