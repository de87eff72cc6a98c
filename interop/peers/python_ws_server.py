#!/usr/bin/env python3
"""A WebSocket server on the Python websockets library, a peer for wspool's
interop tests (interop/python_test.go).

    python3 python_ws_server.py --port N [--ping-interval 1] [--ping-timeout 1] [--max-size B]

It listens on 127.0.0.1:N with websockets' own keepalive (a ping every
--ping-interval seconds; a connection whose pong does not come within
--ping-timeout is closed with 1011) and prints "READY <port>" once listening.
It uses the legacy asyncio API of websockets (Debian bookworm ships 10.4),
with its defaults otherwise: permessage-deflate is accepted when a client
offers it (server_max_window_bits=12, every message compressed).

Each text message from a client is a JSON command:

    {"op":"subscribe","topic":T,"count":N}  -> N x {"type":"tick","topic":T,"seq":i}
    {"op":"echo","data":D}                 -> {"type":"echo","data":D}
    {"op":"stats"}                         -> {"type":"stats","pings_sent":n,"pongs_received":m}
    {"op":"close","code":C,"reason":R}     -> close handshake with C and R
    {"op":"ext"}                           -> {"type":"ext","data":X}, X the
                                              Sec-WebSocket-Extensions header of
                                              this server's 101 ("" if none)
    {"op":"trades","count":N,"batch":B}    -> N trades (see trade()), one per
                                              message if B is 1, else JSON arrays
                                              of B; then {"type":"trades_done","seq":N}
    {"op":"digest"}                        -> {"type":"digest","n":n,"bytes":b,"sha256":h}
                                              over the data messages received so far

A data message is a binary message (echoed back as binary) or a text message
starting with "[" (not echoed): the server counts them and hashes their bytes
in order for "digest", so a test can check what the server inflated.

Every reply also carries "conn" (the connection's number in this process) and
"pid" (this process), so a test can tell connections and restarts apart.
"""

import argparse
import asyncio
import hashlib
import json
import os
import signal

from websockets.legacy.server import WebSocketServerProtocol, serve

PID = os.getpid()
conn_seq = 0


class CountingProtocol(WebSocketServerProtocol):
    """Counts the keepalive pings sent and the pongs that answered them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pings_sent = 0
        self.pongs_received = 0

    async def ping(self, data=None):
        waiter = await super().ping(data)
        self.pings_sent += 1

        def answered(fut):
            if not fut.cancelled() and fut.exception() is None:
                self.pongs_received += 1

        waiter.add_done_callback(answered)
        return waiter


def trade(i):
    """The i-th trade of a market-data-like stream; the Go tests build the
    same bytes (interop/compression_test.go)."""
    p = 4350000 + (i * 7919) % 100000
    return ('{"e":"trade","s":"BTCUSDT","t":%d,"p":"%d.%02d","q":"0.%04d","T":%d,"m":%s}'
            % (i, p // 100, p % 100, (i * 37) % 10000, 1700000000123 + i * 7,
               "true" if i % 3 == 0 else "false"))


async def handler(ws, *_path):
    global conn_seq
    conn_seq += 1
    cid = conn_seq

    async def reply(obj):
        obj.update(conn=cid, pid=PID)
        await ws.send(json.dumps(obj))

    data_n, data_bytes, digest = 0, 0, hashlib.sha256()

    async for raw in ws:
        if isinstance(raw, bytes) or raw.startswith("["):
            b = raw if isinstance(raw, bytes) else raw.encode()
            data_n += 1
            data_bytes += len(b)
            digest.update(b)
            if isinstance(raw, bytes):
                await ws.send(raw)
            continue
        msg = json.loads(raw)
        op = msg.get("op")
        if op == "subscribe":
            for i in range(int(msg["count"])):
                await reply({"type": "tick", "topic": msg["topic"], "seq": i})
        elif op == "echo":
            await reply({"type": "echo", "data": msg["data"]})
        elif op == "stats":
            await reply({"type": "stats", "pings_sent": ws.pings_sent,
                         "pongs_received": ws.pongs_received})
        elif op == "ext":
            await reply({"type": "ext",
                         "data": ws.response_headers.get("Sec-WebSocket-Extensions", "")})
        elif op == "trades":
            n, batch = int(msg["count"]), int(msg["batch"])
            for lo in range(0, n, batch):
                ts = [trade(i) for i in range(lo, min(lo + batch, n))]
                await ws.send(ts[0] if batch == 1 else "[" + ",".join(ts) + "]")
            await reply({"type": "trades_done", "seq": n})
        elif op == "digest":
            await reply({"type": "digest", "n": data_n, "bytes": data_bytes,
                         "sha256": digest.hexdigest()})
        elif op == "close":
            await ws.close(int(msg["code"]), msg.get("reason", ""))
            return


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ping-interval", type=float, default=1.0)
    ap.add_argument("--ping-timeout", type=float, default=1.0)
    # websockets' default is 1 MiB; the compression tests echo more.
    ap.add_argument("--max-size", type=int, default=1 << 20)
    args = ap.parse_args()

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)

    async with serve(handler, "127.0.0.1", args.port,
                     create_protocol=CountingProtocol,
                     ping_interval=args.ping_interval,
                     ping_timeout=args.ping_timeout,
                     max_size=args.max_size):
        print("READY", args.port, flush=True)
        try:
            await stop
        except asyncio.CancelledError:
            pass


if __name__ == "__main__":
    asyncio.run(main())
