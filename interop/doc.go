// Package interop holds wspool's interoperability tests against real peers
// that nobody in this project wrote: a Python websockets server, a Node ws
// server, nginx as a WebSocket reverse proxy, and tinyproxy as an HTTP
// CONNECT forward proxy (plus a self-signed CA for wss). The package has no
// code of its own; see the _test.go files and README.md.
//
// Each peer is started as a subprocess on a free 127.0.0.1 port and killed
// when its test ends. A test whose peer is not installed is skipped locally
// and fails when CI=true. .ci/install-interop.sh installs every peer.
package interop
