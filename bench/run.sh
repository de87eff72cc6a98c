#!/usr/bin/env bash
# Runs every wspool benchmark (each client and server in its own process) and
# prints a results table (Markdown) on stdout; progress goes to stderr.
#
#   bench/run.sh                 # full run, about 25 minutes on 2 cores (latency: 12)
#   QUICK=1 bench/run.sh         # about 8 minutes
#   PROFILE=dir bench/run.sh     # also write CPU/heap profiles of the wspool runs
#   bench/run.sh -only idle -v   # extra arguments go to wsbench
#
# Every child process is killed when wsbench exits (also on Ctrl-C or its
# -timeout); this script adds an outer timeout as a last resort.
set -euo pipefail
cd "$(dirname "$0")"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

args=()
limit=45m
if [ -n "${QUICK:-}" ] && [ "${QUICK}" != 0 ]; then
	args+=(-quick)
	limit=17m
fi
if [ -n "${PROFILE:-}" ]; then
	args+=(-profile "$PROFILE")
fi
commit=$(git -C .. rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C .. status --porcelain --untracked-files=no -- . ':!bench' 2>/dev/null | wc -l || echo 0)
note="library commit $commit"
[ "$dirty" != 0 ] && note="$note (+$dirty modified files in the working tree)"

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/wsbench" ./cmd/wsbench
timeout -k 10 "$limit" "$bin/wsbench" -note "$note" "${args[@]}" "$@"
