#!/usr/bin/env python3
"""A WebSocket server on the Python websockets library, a peer for wspool's
interop tests (interop/python_test.go).

    python3 python_ws_server.py --port N [--ping-interval 1] [--ping-timeout 1]

It listens on 127.0.0.1:N with websockets' own keepalive (a ping every
--ping-interval seconds; a connection whose pong does not come within
--ping-timeout is closed with 1011) and prints "READY <port>" once listening.
It uses the legacy asyncio API of websockets (Debian bookworm ships 10.4).

Each text message from a client is a JSON command:

    {"op":"subscribe","topic":T,"count":N}  -> N x {"type":"tick","topic":T,"seq":i}
    {"op":"echo","data":D}                 -> {"type":"echo","data":D}
    {"op":"stats"}                         -> {"type":"stats","pings_sent":n,"pongs_received":m}
    {"op":"close","code":C,"reason":R}     -> close handshake with C and R

Every reply also carries "conn" (the connection's number in this process) and
"pid" (this process), so a test can tell connections and restarts apart.
"""

import argparse
import asyncio
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


async def handler(ws, *_path):
    global conn_seq
    conn_seq += 1
    cid = conn_seq

    async def reply(obj):
        obj.update(conn=cid, pid=PID)
        await ws.send(json.dumps(obj))

    async for raw in ws:
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
        elif op == "close":
            await ws.close(int(msg["code"]), msg.get("reason", ""))
            return


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ping-interval", type=float, default=1.0)
    ap.add_argument("--ping-timeout", type=float, default=1.0)
    args = ap.parse_args()

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)

    async with serve(handler, "127.0.0.1", args.port,
                     create_protocol=CountingProtocol,
                     ping_interval=args.ping_interval,
                     ping_timeout=args.ping_timeout):
        print("READY", args.port, flush=True)
        try:
            await stop
        except asyncio.CancelledError:
            pass


if __name__ == "__main__":
    asyncio.run(main())
