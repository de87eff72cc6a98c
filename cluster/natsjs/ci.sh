#!/usr/bin/env bash
# CI for cluster/natsjs (run by .ci/run from this directory).
#
# 1. Everything but the multi-process cluster timings, with -race: unit
#    tests, members running inside the test process, and the fault tests
#    (TestFault*: a member partitioned from NATS through a proxy, NATS
#    restarted with 0, 3 and 8 s down, a member killed after a restart),
#    whose collector processes are race-built too; they run 100 feeds at
#    one message per 200 ms (NATSJS_FAULT_FEEDS) and check correctness and
#    loose time bounds.
# 2. The cluster tests (TestCluster*) without -race: each starts collector
#    processes (re-executions of the test binary) that run hundreds of feeds
#    each next to an embedded nats-server, and measures takeover and stall
#    times, which the race detector's 5-10x slowdown would swamp on 2 cores.
#    NATSJS_FEEDS sets the feed count: 200 here by default; the issue's
#    figure is 1000 (NATSJS_FEEDS=1000 ./ci.sh, about two minutes), which
#    passes every correctness check on this 2-core machine, but there the
#    whole cluster needs both cores, so under other work (load average 9+)
#    a stall can pass even the loose 2 s bound (see README.md, "Measured").
set -euo pipefail
cd "$(dirname "$0")"
go test -race -count=1 -skip '^TestCluster' ./...
log=$(mktemp)
status=0
NATSJS_FEEDS="${NATSJS_FEEDS:-200}" go test -count=1 -v -run '^TestCluster' . >"$log" 2>&1 || status=$?
grep -v '^=== RUN' "$log" || true
rm -f "$log"
exit "$status"
