#!/usr/bin/env bash
# Runs every check: vet, gofmt, and all tests with the race detector.
# Tests that need chromium, mosquitto clients or node skip when those are
# missing, unless CI=true, where a missing tool fails the test.
set -euo pipefail
cd "$(dirname "$0")/.."
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt needed:"; echo "$unformatted"; exit 1
fi
go vet ./...
go test -race -timeout 25m -p 2 ./...
