package devices

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// database/sql's connection opener lives until the DB is closed;
		// tests close theirs, but the driver may linger briefly.
		goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"),
	)
}
