#!/usr/bin/env bash
# CI for the bench module, run from inside bench/: vet, tests, every Go
# benchmark once, and a smoke run of the wsbench runner (100 feeds, seconds).
# Bounded: well under 2 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

run() { # run <seconds> <command...>: fail if it takes longer
	local t=$1
	shift
	echo "+ $*"
	timeout -k 5 "$t" "$@"
}

run 60 go vet ./...
run 90 go test -count=1 -run . -bench . -benchtime 1x ./...
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
run 60 go build -o "$bin/wsbench" ./cmd/wsbench
run 75 "$bin/wsbench" -smoke -timeout 65s -plots "$bin/plots"
