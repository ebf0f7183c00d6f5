package database

// isPostgresConstraint reports a PostgreSQL integrity constraint violation.
func isPostgresConstraint(err error) bool { return false }
