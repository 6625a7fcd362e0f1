"""Request and answer bodies in memory: the size limit, the timeouts and the budget.

Every body the server holds is charged to one budget, ``PTSERVE_MAX_BUFFERED_BYTES``,
from before it is read until its answer is sent: a body whose ``Content-Length``
would pass the budget is refused before a byte of it is read, and a chunked or
compressed body as soon as what it grew to passes it. So many large uploads at
once get ``503`` instead of exhausting the server's memory, while small requests
still fit. A large answer is charged too, until the client has taken it; a
client that does not take it within the body timeout is disconnected.

Compressed bodies (``Content-Encoding: gzip`` or ``deflate``) are inflated here,
step by step and never past the size limit, so a small compressed body cannot
expand unchecked (the HTTP library's own decompression is off: it would inflate
whole chunks before any limit applied).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

from aiohttp import hdrs, web

from ptserve.errors import ApiError
from ptserve.settings import Settings

SEND_UNTIMED = 64 * 1024  # answers the transport buffers without waiting for the client
TRAILING = "request body has data after its compressed data"
INFLATE_STEP = 256 * 1024  # inflated at most per step, each charged before the next
# zlib window bits: gzip only for gzip; a zlib or gzip header for deflate.
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
             "deflate": 32 + zlib.MAX_WBITS}


class BodyReader:
    """Reads request bodies within the limits of ``settings``; ``held`` is what the
    bodies being read or answered take now."""

    def __init__(self, settings: Settings) -> None:
        self.max_body = settings.max_body_bytes
        self.budget = settings.max_buffered_bytes
        self.timeout = settings.body_timeout_seconds
        self.held = 0

    @asynccontextmanager
    async def read(self, request: web.Request) -> AsyncIterator[bytes]:
        """The whole body, charged to the budget until the ``async with`` block ends."""
        charge = _Charge(self)
        try:
            encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
            if encoding != "identity" and encoding not in ENCODINGS:
                raise ApiError(
                    415,
                    f"Content-Encoding {encoding} is not accepted: send the body as is, "
                    "or compressed with gzip or deflate",
                )
            length = request.content_length
            if length is not None and length > self.max_body:
                raise self.too_large()
            if encoding == "identity" and length is not None:
                charge.add(length)
                if request.content.is_eof():  # received whole already: nothing to time
                    yield await request.read()
                else:
                    yield await self._timed(request.read())
            else:
                yield await self._timed(self._grown(request, charge, ENCODINGS.get(encoding)))
        finally:
            self.held -= charge.bytes

    async def _timed(self, reading: Awaitable[bytes]) -> bytes:
        try:
            return await asyncio.wait_for(reading, self.timeout)
        except web.HTTPRequestEntityTooLarge:  # aiohttp's own check (client_max_size)
            raise self.too_large() from None
        except TimeoutError:
            raise ApiError(
                408,
                f"request body not received within {self.timeout:g} s "
                "(PTSERVE_BODY_TIMEOUT_SECONDS)",
                close=True,
            ) from None

    async def _grown(self, request: web.Request, charge: _Charge, wbits: int | None) -> bytes:
        """A chunked or compressed body, inflated and charged as it grows."""
        inflater = None if wbits is None else zlib.decompressobj(wbits)
        parts: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            pending = chunk
            while pending:
                if inflater is None:
                    part, pending = pending, b""
                else:
                    part = self._inflate(inflater, pending, min(INFLATE_STEP, self.max_body - size + 1))
                    pending = inflater.unconsumed_tail
                size += len(part)
                if size > self.max_body:
                    raise self.too_large()
                charge.add(len(part))
                parts.append(part)
        if inflater is not None and not inflater.eof:
            raise ApiError(400, "request body ends before its compressed data does")
        if inflater is not None and inflater.unused_data:
            raise ApiError(400, TRAILING)
        return b"".join(parts)

    @staticmethod
    def _inflate(inflater: "zlib._Decompress", data: bytes, most: int) -> bytes:
        if inflater.eof:
            raise ApiError(400, TRAILING)
        try:
            return inflater.decompress(data, most)
        except zlib.error as exc:
            raise ApiError(400, f"request body is not valid compressed data: {exc}") from None

    async def send(self, request: web.Request, response: web.Response) -> web.Response:
        """Write a large answer now, charged to the budget until the client has taken it
        (all but what the socket buffers hold); a client that has not within the body
        timeout is disconnected. Small answers are left for aiohttp to write."""
        size = len(response.body) if isinstance(response.body, bytes) else 0
        if size <= SEND_UNTIMED:
            return response
        self.held += size  # already computed: charged even past the budget, refusing others
        try:
            await asyncio.wait_for(self._write(request, response), self.timeout)
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionError(
                f"the client did not take its {size}-byte answer within {self.timeout:g} s "
                "(PTSERVE_BODY_TIMEOUT_SECONDS)"
            ) from None
        finally:
            self.held -= size
        return response

    @staticmethod
    async def _write(request: web.Request, response: web.Response) -> None:
        await response.prepare(request)
        await response.write_eof()

    def too_large(self) -> ApiError:
        """The 413 error of a body over PTSERVE_MAX_BODY_BYTES."""
        return ApiError(
            413,
            f"request body is larger than the {self.max_body}-byte limit (PTSERVE_MAX_BODY_BYTES)",
        )


class _Charge:
    """The bytes one request holds of the budget."""

    def __init__(self, reader: BodyReader) -> None:
        self.reader = reader
        self.bytes = 0

    def add(self, size: int) -> None:
        """Take ``size`` more bytes, or 503 if the budget has not that much left."""
        reader = self.reader
        if reader.held + size > reader.budget:
            raise ApiError(
                503,
                f"server is busy: request bodies hold {reader.held} bytes and this one "
                f"would pass the {reader.budget}-byte budget (PTSERVE_MAX_BUFFERED_BYTES)",
            )
        reader.held += size
        self.bytes += size
