module github.com/wspool/wspool/interop

go 1.26.0

replace github.com/wspool/wspool => ../

require (
	github.com/gorilla/websocket v1.5.3
	github.com/wspool/wspool v0.0.0-00010101000000-000000000000
)

require (
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	golang.org/x/sync v0.24.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
