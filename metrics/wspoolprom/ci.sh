#!/usr/bin/env bash
# CI for this module (.ci/run runs it): the tests with -race, then the
# 10,000-feed scrape measurement without it, its figures in the log.
set -euo pipefail
cd "$(dirname "$0")"
go test -race -count=1 ./...
go test -count=1 -v -run '^TestScrape10000Feeds$' . | grep -v '^=== RUN'
