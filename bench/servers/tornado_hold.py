"""The memory test's control: plain Tornado holding requests, no Celery, no library.

``GET /hold`` parks the request on an ``asyncio.Event`` until ``GET /release``; ``GET
/pending`` says how many are parked. The RSS this process needs per parked request is the
floor that any Tornado handler pays (connection, stream, request, handler, one coroutine);
what ours needs beyond it is the library's own cost.
"""

from __future__ import annotations

import asyncio

import tornado.web

from bench.servers.common import parse_args, serve


class State:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.pending = 0


class HoldHandler(tornado.web.RequestHandler):
    def initialize(self, state: State) -> None:
        self.state = state

    async def get(self) -> None:
        self.state.pending += 1
        try:
            await self.state.release.wait()
        finally:
            self.state.pending -= 1
        self.set_header("Content-Type", "application/json")
        self.write(b'{"released":true}')


class PendingHandler(HoldHandler):
    async def get(self) -> None:
        self.write({"pending": self.state.pending})


class ReleaseHandler(HoldHandler):
    async def get(self) -> None:
        # Wake everyone parked so far; later requests park on a fresh event.
        released, self.state.release = self.state.release, asyncio.Event()
        released.set()
        self.write({"released": self.state.pending})


async def main(port: int) -> None:
    state = State()
    app = tornado.web.Application([
        (r"/hold", HoldHandler, {"state": state}),
        (r"/pending", PendingHandler, {"state": state}),
        (r"/release", ReleaseHandler, {"state": state}),
    ], compress_response=False)
    await serve(app, port)


if __name__ == "__main__":
    asyncio.run(main(parse_args(__doc__ or "").port))
