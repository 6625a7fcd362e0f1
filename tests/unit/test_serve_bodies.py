"""Model server: request and answer bodies within the size limit, timeouts and budget.

Each case runs an aiohttp server in-process with a handler that reads through
``ptserve.bodies.BodyReader`` (real sockets, no torch), and checks that every
byte charged to the budget is given back, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib
import json
import zlib
from collections.abc import Awaitable, Callable

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

bodies = importlib.import_module("ptserve.bodies")
errors = importlib.import_module("ptserve.errors")
settings = importlib.import_module("ptserve.settings")

MAX_BODY = 100_000
BUDGET = 150_000


def serve(check: Callable[[object, str, aiohttp.ClientSession], Awaitable[None]],
          answer_size: int = 2, hold: asyncio.Event | None = None) -> None:
    """Run ``check(reader, url, session)`` against a server whose handler reads the body,
    waits for ``hold`` (if given) and answers ``answer_size`` bytes."""
    reader = bodies.BodyReader(settings.Settings(
        max_body_bytes=MAX_BODY, max_buffered_bytes=BUDGET, body_timeout_seconds=1.0))

    async def handler(request: web.Request) -> web.Response:
        try:
            async with reader.read(request) as body:
                if hold is not None:
                    await hold.wait()
                size = len(body)
            answer = str(size).encode().ljust(answer_size)
            return await reader.send(request, web.Response(body=answer))
        except errors.ApiError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)

    async def main() -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/", handler)
        runner = web.AppRunner(app, auto_decompress=False)  # as the server's runner
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                await check(reader, f"http://127.0.0.1:{port}/", session)
        finally:
            await runner.cleanup()
        assert reader.held == 0  # every charge given back

    asyncio.run(main())


async def post(session: aiohttp.ClientSession, url: str, data: object,
               **headers: str) -> tuple[int, str]:
    async with session.post(url, data=data, headers=headers) as response:
        text = (await response.read()).decode().strip()
        return response.status, json.loads(text)["error"] if response.status != 200 else text


def test_bodies_are_read_whole_and_their_charge_given_back():
    async def check(reader, url, session):
        assert await post(session, url, b"x" * 5000) == (200, "5000")
        chunks = (b"y" * 1000 for _ in range(30))

        async def chunked():
            for chunk in chunks:
                yield chunk
        assert await post(session, url, chunked()) == (200, "30000")
        status, error = await post(session, url, b"z" * (MAX_BODY + 1))
        assert status == 413 and "PTSERVE_MAX_BODY_BYTES" in error
    serve(check, answer_size=8)


def test_the_budget_refuses_what_would_pass_it_and_comes_back():
    hold = asyncio.Event()

    async def check(reader, url, session):
        held = asyncio.create_task(post(session, url, b"a" * MAX_BODY))
        while reader.held < MAX_BODY:
            await asyncio.sleep(0.01)
        status, error = await post(session, url, b"b" * 60_000)
        assert status == 503 and "PTSERVE_MAX_BUFFERED_BYTES" in error

        async def chunked():
            for _ in range(6):
                yield b"c" * 10_000
        status, error = await post(session, url, chunked())
        assert status == 503 and "PTSERVE_MAX_BUFFERED_BYTES" in error
        hold.set()
        assert await held == (200, str(MAX_BODY))
        assert await post(session, url, b"b" * 60_000) == (200, "60000")
    serve(check, answer_size=6, hold=hold)


COMPRESSED = {
    "gzip": ("gzip", gzip.compress(b"x" * 4000), 200, "4000"),
    "deflate": ("deflate", zlib.compress(b"x" * 4000), 200, "4000"),
    "gzip bomb": ("gzip", gzip.compress(b" " * 50_000_000), 413, "PTSERVE_MAX_BODY_BYTES"),
    "truncated": ("gzip", gzip.compress(b"x" * 4000)[:-9], 400, "ends before its compressed"),
    "trailing data": ("gzip", gzip.compress(b"x") + b"tail", 400, "data after its compressed"),
    "corrupt": ("gzip", b"not gzip", 400, "not valid compressed data"),
    "brotli": ("br", b"x", 415, "Content-Encoding br is not accepted"),
}


@pytest.mark.parametrize("encoding, data, status, message", COMPRESSED.values(), ids=COMPRESSED)
def test_compressed_bodies(encoding, data, status, message):
    async def check(reader, url, session):
        got, text = await post(session, url, data, **{"Content-Encoding": encoding})
        assert got == status and message in text
    serve(check, answer_size=4)


def test_a_stalled_body_times_out():
    async def check(reader, url, session):
        async def stalled():
            yield b"x" * 100
            await asyncio.sleep(3)
            yield b"x"
        status, error = await post(session, url, stalled(), **{"Content-Length": "101"})
        assert status == 408 and "PTSERVE_BODY_TIMEOUT_SECONDS" in error
    serve(check)


def test_a_large_answer_is_charged_until_taken():
    async def check(reader, url, session):
        async with session.post(url, data=b"x") as response:
            assert response.status == 200
            assert len(await response.read()) == 1_000_000
    serve(check, answer_size=1_000_000)
