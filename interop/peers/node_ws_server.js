#!/usr/bin/env node
// A WebSocket server on the npm package ws, a peer for wspool's interop tests
// (interop/node_test.go). ws is installed into interop/node/ by
// .ci/install-interop.sh; the test puts interop/node/node_modules on NODE_PATH.
//
//   node node_ws_server.js --port N [--ping-interval-ms 1000]
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
//
// Every reply also carries "conn" (the connection's number in this process)
// and "pid" (this process).
'use strict';

const { WebSocketServer } = require('ws');

function arg(name, def) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : def;
}

const port = Number(arg('--port'));
const pingIntervalMs = Number(arg('--ping-interval-ms', '1000'));
if (!port) {
  console.error('usage: node_ws_server.js --port N [--ping-interval-ms MS]');
  process.exit(2);
}

let connSeq = 0;
const wss = new WebSocketServer({ host: '127.0.0.1', port });

wss.on('connection', (ws) => {
  const conn = ++connSeq;
  ws.isAlive = true;
  ws.pingsSent = 0;
  ws.pongsReceived = 0;
  ws.on('pong', () => {
    ws.isAlive = true;
    ws.pongsReceived++;
  });
  const reply = (obj) => ws.send(JSON.stringify({ ...obj, conn, pid: process.pid }));
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
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
