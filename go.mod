module github.com/wspool/wspool

go 1.26.0

require (
	github.com/cenkalti/backoff/v4 v4.3.0
	github.com/gorilla/websocket v1.5.3
	golang.org/x/sync v0.24.0
	golang.org/x/sys v0.49.0
)
