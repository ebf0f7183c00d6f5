package main

import (
	"context"
	"errors"
	"io"
)

// runDevices is not built yet.
func runDevices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("not implemented yet")
}
