package devices

import (
	"errors"
	"fmt"
)

// Errors the registry returns, to be matched with errors.Is. The HTTP API
// maps them to 404, 409 (ErrConflict, ErrLastAdmin) and 401.
var (
	// ErrNotFound: no device, user or token by that name.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the id or name is taken (by a device or a user: they
	// share one namespace).
	ErrConflict = errors.New("already exists")
	// ErrUnauthorized: the credentials are wrong, unknown, expired,
	// revoked or belong to a disabled device. Deliberately vague.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrLastAdmin: the change would leave no user with the admin role.
	ErrLastAdmin = errors.New("the last admin cannot be deleted or demoted")
)

// InvalidError is bad input: Field names the offending field (JSON name),
// Msg says what is wrong with it. The HTTP API maps it to 400. Match it
// with errors.As.
type InvalidError struct {
	Field string
	Msg   string
}

func (e *InvalidError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Msg) }

func invalid(field, format string, a ...any) error {
	return &InvalidError{Field: field, Msg: fmt.Sprintf(format, a...)}
}
