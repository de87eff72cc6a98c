#!/usr/bin/env node
// A WebSocket server on the npm package ws, a peer for wspool's interop tests
// (interop/node_test.go). ws is installed into interop/node/ by
// .ci/install-interop.sh; the test puts interop/node/node_modules on NODE_PATH.
//
//   node node_ws_server.js --port N [--ping-interval-ms 1000] [--deflate off|on|snct-only]
//
// --deflate on accepts permessage-deflate when a client offers it, with ws's
// defaults except threshold 0 (ws compresses only messages of 1 KiB or more by
// default; 0 compresses every one). snct-only does the same, then rewrites
// the 101's Sec-WebSocket-Extensions to name server_no_context_takeover alone,
// as RFC 7692 allows (the client resets its context per message anyway).
//
// It listens on 127.0.0.1:N, prints "READY <port>" once listening, and runs
// the heartbeat ws documents: every --ping-interval-ms it terminates each
// client that did not answer the previous ping with a pong, and pings the
// others.
//
// Each text message from a client is a JSON command:
//
//   {"op":"subscribe","topic":T,"count":N}  -> N x {"type":"tick","topic":T,"seq":i}
//   {"op":"echo","data":D}                 -> {"type":"echo","data":D}
//   {"op":"stats"}                         -> {"type":"stats","pings_sent":n,"pongs_received":m}
//   {"op":"close","code":C,"reason":R}     -> close handshake with C and R
//   {"op":"ext"}                           -> {"type":"ext","data":X}, X the
//                                             Sec-WebSocket-Extensions of this
//                                             server's 101 ("" if none)
//   {"op":"trades","count":N,"batch":B}    -> N trades (see trade()), one per
//                                             message if B is 1, else JSON arrays
//                                             of B; then {"type":"trades_done","seq":N}
//   {"op":"digest"}                        -> {"type":"digest","n":n,"bytes":b,"sha256":h}
//                                             over the data messages received so far
//
// A data message is a binary message (echoed back as binary) or a text
// message starting with "[" (not echoed): the server counts them and hashes
// their bytes in order for "digest", so a test can check what it inflated.
//
// Every reply also carries "conn" (the connection's number in this process)
// and "pid" (this process).
'use strict';

const crypto = require('crypto');
const { WebSocketServer } = require('ws');

function arg(name, def) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : def;
}

const port = Number(arg('--port'));
const pingIntervalMs = Number(arg('--ping-interval-ms', '1000'));
const deflate = arg('--deflate', 'off');
if (!port) {
  console.error('usage: node_ws_server.js --port N [--ping-interval-ms MS] [--deflate off|on|snct-only]');
  process.exit(2);
}

// The i-th trade of a market-data-like stream; the Go tests build the same
// bytes (interop/compression_test.go).
function trade(i) {
  const p = 4350000 + ((i * 7919) % 100000);
  const pct = String(p % 100).padStart(2, '0');
  const q = String((i * 37) % 10000).padStart(4, '0');
  return `{"e":"trade","s":"BTCUSDT","t":${i},"p":"${Math.floor(p / 100)}.${pct}","q":"0.${q}","T":${1700000000123 + i * 7},"m":${i % 3 === 0}}`;
}

let connSeq = 0;
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: deflate === 'off' ? false : { threshold: 0 },
});

// Record (and for snct-only, rewrite) the extension header of each 101.
wss.on('headers', (headers, req) => {
  for (let i = 0; i < headers.length; i++) {
    if (!/^sec-websocket-extensions:/i.test(headers[i])) continue;
    if (deflate === 'snct-only') {
      headers[i] = 'Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover';
    }
    req.wsExtensions = headers[i].replace(/^[^:]*:\s*/, '');
  }
});

wss.on('connection', (ws, req) => {
  const conn = ++connSeq;
  ws.isAlive = true;
  ws.pingsSent = 0;
  ws.pongsReceived = 0;
  ws.on('pong', () => {
    ws.isAlive = true;
    ws.pongsReceived++;
  });
  const reply = (obj) => ws.send(JSON.stringify({ ...obj, conn, pid: process.pid }));
  let dataN = 0;
  let dataBytes = 0;
  const digest = crypto.createHash('sha256');
  ws.on('message', (data, isBinary) => {
    if (isBinary || data[0] === 0x5b /* [ */) {
      dataN++;
      dataBytes += data.length;
      digest.update(data);
      if (isBinary) ws.send(data, { binary: true });
      return;
    }
    const msg = JSON.parse(data.toString('utf8'));
    switch (msg.op) {
      case 'subscribe':
        for (let i = 0; i < msg.count; i++) reply({ type: 'tick', topic: msg.topic, seq: i });
        break;
      case 'echo':
        reply({ type: 'echo', data: msg.data });
        break;
      case 'stats':
        reply({ type: 'stats', pings_sent: ws.pingsSent, pongs_received: ws.pongsReceived });
        break;
      case 'ext':
        reply({ type: 'ext', data: req.wsExtensions || '' });
        break;
      case 'trades':
        for (let lo = 0; lo < msg.count; lo += msg.batch) {
          const ts = [];
          for (let i = lo; i < Math.min(lo + msg.batch, msg.count); i++) ts.push(trade(i));
          ws.send(msg.batch === 1 ? ts[0] : '[' + ts.join(',') + ']');
        }
        reply({ type: 'trades_done', seq: msg.count });
        break;
      case 'digest':
        reply({ type: 'digest', n: dataN, bytes: dataBytes, sha256: digest.copy().digest('hex') });
        break;
      case 'close':
        ws.close(msg.code, msg.reason || '');
        break;
    }
  });
  ws.on('error', () => {});
});

const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.pingsSent++;
    ws.ping();
  }
}, pingIntervalMs);

wss.on('listening', () => console.log('READY ' + port));
wss.on('error', (err) => {
  console.error(err.message);
  process.exit(1);
});

const stop = () => {
  clearInterval(heartbeat);
  wss.close();
  for (const ws of wss.clients) ws.terminate();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
