// Package wspooltest provides real WebSocket servers and a fault-injecting TCP
// proxy on loopback, for testing code built on wspool (handlers, OnConnect
// logic, resume cursors) against the faults wspool survives.
//
// Nothing here is a mock: a [Server] is gorilla/websocket's own server on
// 127.0.0.1, and a [Proxy] forwards real TCP connections, so the client under
// test runs its real reconnect, liveness and resume paths.
//
// # Servers
//
// [NewServer] starts a server whose connections are served by a script, a
// func(*Conn) run once per connection (nil keeps each connection open until
// the client or the test ends it). A test can also take each connection as
// it arrives with [Server.Accept] and script it from the test goroutine. A
// [Conn] sends, reads, closes with a status, drops abruptly, and freezes (it
// stops answering, like a hung process whose kernel still acknowledges
// packets). The server itself can refuse upgrades with an HTTP status
// ([Server.Refuse]), limit the rate of upgrades ([Server.LimitUpgrades]), and
// stop and start again on the same port ([Server.Stop], [Server.Start]).
//
// # Sequenced streams
//
// A [Stream] is a script producing numbered messages per URL path, with a
// resume point in the URL (?from=N replays N and everything after it): plain
// decimal numbers by default, or with [Updates] JSON updates of a key-value
// state numbered as upstreams number them (single numbers, ranges First..Last,
// or ids linked to the previous one), each with a checksum of the state, plus
// an HTTP snapshot endpoint ([Stream.SnapshotURL]) whose answer can lag the
// stream. Its faults are those a sequenced client must survive: numbers left
// out ([Stream.Skip]), numbering started again in a new epoch
// ([Stream.Restart]), wrong updates ([Stream.Corrupt]), a lagging snapshot
// ([Stream.SnapshotLag], [Stream.SnapshotDelay]) and a connection that stops
// publishing while alive ([Stream.Pause]); it can require a subscription
// ([Subscribe]) and close a client that sends too fast with 1008
// ([MessageLimit]).
//
// # Faults on the network
//
// A [Proxy] sits between client and server and can reset every connection,
// blackhole them (stop forwarding, keep the sockets: a dead peer that TCP
// does not notice), add latency, throttle bandwidth, and refuse new
// connections.
//
// Every type is safe for concurrent use. Servers and proxies listen on
// 127.0.0.1 only; Close leaves no goroutine or socket behind.
package wspooltest
