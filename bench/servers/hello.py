"""(a) Tornado hello world: ``GET /v1/user`` answers the example's payload from memory.

No Celery, no broker: the upper bound of what one Tornado process serves on this machine,
with the same response bytes (read from ``--payload-file``) as the waiting routes return.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import tornado.web

from bench.servers.common import parse_args, serve


class UserHandler(tornado.web.RequestHandler):
    payload: bytes = b"[]"

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(self.payload)


def make_app(payload: bytes) -> tornado.web.Application:
    handler = type("PayloadHandler", (UserHandler,), {"payload": payload})
    return tornado.web.Application([(r"/v1/user/?", handler)])


def main() -> None:
    args = parse_args(__doc__ or "", extra=[("--payload-file", {"type": Path, "required": True})])
    asyncio.run(serve(make_app(args.payload_file.read_bytes()), args.port))


if __name__ == "__main__":
    main()
