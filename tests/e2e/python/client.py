#!/usr/bin/env python3
"""A python-socketio AsyncClient for the e2e suite (the second official client).

Connects to a gateway, joins a room, prints `joined <ack as JSON>` once the join is acknowledged,
waits for one event, prints it as one JSON line `{"event": ..., "args": [...]}` and exits 0.
Exits 1 with a message on stderr on a refused join, a connection error or a timeout.

    python3 client.py --url http://127.0.0.1:3002 --room chat:42 --event message
"""

import argparse
import asyncio
import json
import sys

import socketio


async def run(args: argparse.Namespace) -> int:
    sio = socketio.AsyncClient(reconnection=False)
    received: asyncio.Future = asyncio.get_running_loop().create_future()

    @sio.on("*")
    async def any_event(event, *data):  # catch-all: every event name, every argument
        if event == args.event and not received.done():
            received.set_result({"event": event, "args": list(data)})

    transports = args.transports.split(",") if args.transports else None
    await sio.connect(args.url, transports=transports, wait_timeout=args.timeout)
    try:
        ack = await sio.call("join", args.room, timeout=args.timeout)
        if not isinstance(ack, dict) or ack.get("ok") is not True:
            print(f"join refused: {ack!r}", file=sys.stderr)
            return 1
        print(f"joined {json.dumps(ack)} transport={sio.transport()}", flush=True)
        event = await asyncio.wait_for(received, args.timeout)
        print(json.dumps(event, ensure_ascii=False, separators=(",", ":")), flush=True)
        return 0
    finally:
        await sio.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="gateway URL, e.g. http://127.0.0.1:3002")
    parser.add_argument("--room", required=True)
    parser.add_argument("--event", required=True, help="event to wait for")
    parser.add_argument("--transports", default="", help="comma list, e.g. websocket (default: polling then upgrade)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds for each step")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except (asyncio.TimeoutError, socketio.exceptions.SocketIOError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
