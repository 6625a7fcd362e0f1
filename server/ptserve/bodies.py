"""Reading request bodies: the size limit, the read timeout and the buffer budget.

Every body the server holds is charged to one budget, ``PTSERVE_MAX_BUFFERED_BYTES``,
from before it is read until its answer is sent: a body whose ``Content-Length``
would pass the budget is refused before a byte of it is read, and a chunked body
as soon as the chunks received pass it. So many large uploads at once get
``503`` instead of exhausting the server's memory, while small requests still fit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from ptserve.errors import ApiError
from ptserve.settings import Settings


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
            length = request.content_length
            if length is not None:
                if length > self.max_body:
                    raise self._too_large()
                charge.add(length)
            yield await self._receive(request, charge, length is None)
        finally:
            self.held -= charge.bytes

    async def _receive(self, request: web.Request, charge: _Charge, chunked: bool) -> bytes:
        try:
            if request.content.is_eof():  # received whole already: nothing to wait for
                body = await request.read()
                if chunked:
                    charge.add(len(body))
                return body
            if not chunked:
                return await asyncio.wait_for(request.read(), self.timeout)
            return await asyncio.wait_for(self._chunks(request, charge), self.timeout)
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None
        except TimeoutError:
            raise ApiError(
                408,
                f"request body not received within {self.timeout:g} s "
                "(PTSERVE_BODY_TIMEOUT_SECONDS)",
                close=True,
            ) from None

    async def _chunks(self, request: web.Request, charge: _Charge) -> bytes:
        """A body of unknown length, charged to the budget as its chunks arrive."""
        parts: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            charge.add(len(chunk))
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self) -> ApiError:
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
