#!/usr/bin/env bash
# CI for the interop module, run from inside interop/ by .ci/run (after
# .ci/install-interop.sh installed the peers). With CI=true a test whose peer
# is missing fails instead of skipping. -v so the log shows every test ran.
set -euo pipefail
cd "$(dirname "$0")"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
go vet ./...
timeout -k 10 300 go test -race -count=1 -v ./...
