// Package testpg starts a real PostgreSQL server for tests: Debian's
// postgresql package's initdb and postgres, in a temporary directory,
// listening only on a unix socket there. As root, the server runs as the
// postgres user (both programs refuse root). Without the binaries a test
// is skipped, unless CI is set, where it fails. It is imported by tests
// only.
package testpg
