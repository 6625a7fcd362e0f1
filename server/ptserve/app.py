"""HTTP routes of the KServe v2 protocol, JSON errors, access log and request metrics.

Malformed HTTP never reaches the routes: aiohttp's connection handler answers
it, so :class:`JsonErrorRunner` swaps in a handler whose ``handle_error``
answers JSON and logs one access line, without a traceback. The same handler
closes a connection that sends no complete request head in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial
from http import HTTPStatus
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from ptserve import __version__, logs
from ptserve.batching import Batcher
from ptserve.bodies import BodyReader
from ptserve.codec import HEADER_LENGTH
from ptserve.errors import ApiError
from ptserve.metrics import ServerMetrics
from ptserve.modelconfig import ModelConfig
from ptserve.repository import Model, ModelVersion, Repository, State
from ptserve.settings import Settings

if TYPE_CHECKING:
    from ptserve.runtime import InferReply, Runtime

SERVER_NAME = "ptserve"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
PLATFORM = "pytorch_torchscript"
NOT_READY = 400  # the protocol: 200 for ready, 4xx for not ready
JSON_TYPES = ("application/json", "application/octet-stream")
# Batched requests with bodies up to INLINE_BYTES are decoded on the event loop, and
# answers of up to INLINE_VALUES output values encoded there: for small tensors the
# hand-off to a worker thread costs more than the work.
INLINE_BYTES = 64 * 1024
INLINE_VALUES = 16 * 1024
HEAD_LIMIT = 64 * 1024
"""Bytes a connection may send towards one request head (request line and headers):
the HTTP parser limits each line, not how many there are."""


@dataclass
class ServerState:
    """What the handlers share: settings, models, runtime, metrics, worker pool."""

    settings: Settings
    repository: Repository
    runtime: Runtime
    metrics: ServerMetrics
    executor: Executor
    inflight: int = 0
    draining: bool = False
    batchers: dict[tuple[str, int], Batcher] = field(default_factory=dict)
    _counted: dict[tuple[str, int], tuple[Any, Any]] = field(
        default_factory=dict, init=False, repr=False
    )
    bodies: BodyReader = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bodies = BodyReader(self.settings)

    def not_ready_reason(self) -> str:
        """Why ``/v2/health/ready`` fails, or "" when the server is ready."""
        if self.draining:
            return "the server is shutting down"
        return self.repository.not_ready_reason()

    def batcher(self, config: ModelConfig, version: ModelVersion) -> Batcher:
        """The batcher of a model version with ``dynamic_batching`` (made on first use)."""
        key = (version.model, version.version)
        if key not in self.batchers:
            assert config.dynamic_batching is not None
            model = version.model
            histogram = self.metrics.batch_size.labels(model)
            self.batchers[key] = Batcher(
                lambda batch: self.runtime.forward_batch(model, config, version, batch),
                self.executor,
                config.max_batch_size,
                config.dynamic_batching,
                histogram.observe,
            )
        return self.batchers[key]

    def close(self) -> None:
        """Stop the batchers."""
        for batcher in self.batchers.values():
            batcher.close()

    def count(self, model: str, status: int, seconds: float) -> None:
        """Record one answered request in the metrics."""
        series = self._counted.get((model, status))
        if series is None:
            series = (self.metrics.requests.labels(model, str(status)),
                      self.metrics.request_seconds.labels(model))
            self._counted[(model, status)] = series
        series[0].inc()
        series[1].observe(seconds)


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer."""
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )


def error_response(status: int, message: str) -> web.Response:
    """The ``{"error": ...}`` answer used for every failure."""
    return json_response({"error": message}, status)


def log_refusal(count: Any, status: int, text: str, remote: str | None, **where: Any) -> None:
    """An error answered outside the middleware: one access line, and counted."""
    logs.info("access", **where, status=status, remote=remote, error=text)
    if count is not None:
        count("", status, 0.0)


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no endpoint {request.method} {request.path}"
    if exc.status == 405:
        return f"method {request.method} is not allowed for {request.path}"
    return exc.reason


class Api:
    """The route handlers over one :class:`ServerState`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Turn errors into JSON answers; count, time and log every request."""
        started = time.perf_counter()
        message = ""
        try:
            response = await handler(request)
        except ConnectionError as exc:
            # The client went away mid-request: nobody gets an answer, so log no status.
            logs.info(
                "client_disconnected", method=request.method, path=request.path,
                remote=request.remote, ms=round((time.perf_counter() - started) * 1000, 3),
                reason=str(exc) or type(exc).__name__,
            )
            return web.Response(status=499)
        except ApiError as exc:
            message = exc.message
            response = error_response(exc.status, message)
            if exc.close:
                response.force_close()
        except web.HTTPException as exc:
            message = _http_error_message(request, exc)
            response = error_response(exc.status, message)
        except Exception as exc:  # noqa: BLE001 - answer 500 and keep serving
            logs.log(logging.ERROR, "handler_failed", exc_info=True, path=request.path)
            message = f"internal error: {type(exc).__name__}"
            response = error_response(500, message)
        seconds = time.perf_counter() - started
        name = request.match_info.get("name", "")
        self.state.count(name if name in self.state.repository.models else "",
                         response.status, seconds)
        fields = {"error": message} if message else {}
        logs.info(
            "access",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round(seconds * 1000, 3),
            remote=request.remote,
            **fields,
        )
        return response

    def routes(self) -> list[web.RouteDef]:
        """Every endpoint, with and without an explicit model version."""
        model = "/v2/models/{name}"
        versioned = model + "/versions/{version}"
        get, post = (partial(route, expect_handler=self.expect) for route in (web.get, web.post))
        return [
            get("/v2/health/live", self.live),
            get("/v2/health/ready", self.ready),
            get("/v2", self.server_metadata),
            post("/v2/repository/index", self.repository_index),
            post("/v2/repository/models/{name}/load", self.repository_control),
            post("/v2/repository/models/{name}/unload", self.repository_control),
            get("/metrics", self.metrics),
            *(get(p, self.model_metadata) for p in (model, versioned)),
            *(get(p + "/ready", self.model_ready) for p in (model, versioned)),
            *(post(p + "/infer", self.infer) for p in (model, versioned)),
        ]

    async def expect(self, request: web.Request) -> web.Response | None:
        """An ``Expect`` header (answered before the middleware runs): a body over the
        limit is refused before it is sent, ``100-continue`` lets it come, and any other
        expectation gets 417."""
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.strip().lower() != "100-continue":
            error = ApiError(417, f"Expect: {expect} is not supported; only 100-continue is")
        elif (request.content_length or 0) > self.state.settings.max_body_bytes:
            error = self.state.bodies.too_large()
        else:
            if request.version >= HttpVersion11:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0  # the answer itself has not started
            return None
        log_refusal(self.state.count, error.status, error.message, request.remote,
                    method=request.method, path=request.path)
        response = error_response(error.status, error.message)
        response.force_close()  # the body, if sent anyway, is not read
        return response

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        reason = self.state.not_ready_reason()
        if reason:
            return json_response({"ready": False, "error": f"not ready: {reason}"}, NOT_READY)
        return json_response({"ready": True})

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response(
            {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}
        )

    async def repository_index(self, request: web.Request) -> web.Response:
        async with self.state.bodies.read(request) as body:
            try:
                options = json.loads(body) if body.strip() else {}
            except ValueError:
                raise ApiError(400, "repository index body is not valid JSON") from None
        rows = self.state.repository.index()
        if isinstance(options, dict) and options.get("ready") is True:
            rows = [row for row in rows if row["state"] == State.READY.value]
        return json_response(rows)

    async def repository_control(self, request: web.Request) -> web.Response:
        self.state.repository.model(request.match_info["name"])
        action = request.path.rsplit("/", 1)[1]
        raise ApiError(
            400,
            f"ptserve loads every model of the repository at start; explicit {action} "
            "is not supported (restart the server to change models)",
        )

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.state.metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _lookup(self, request: web.Request) -> tuple[Model, ModelVersion]:
        model = self.state.repository.model(request.match_info["name"])
        return model, model.version(request.match_info.get("version"))

    def _ready_version(
        self, request: web.Request
    ) -> tuple[Model, ModelVersion, ModelConfig]:
        model, version = self._lookup(request)
        if version.state is not State.READY or model.config is None:
            raise ApiError(503, _not_ready(version))
        return model, version, model.config

    async def model_metadata(self, request: web.Request) -> web.Response:
        model, _, config = self._ready_version(request)
        return json_response(
            {
                "name": model.name,
                "versions": [str(v) for v in sorted(model.versions)],
                "platform": PLATFORM,
                "inputs": [spec.metadata() for spec in config.inputs],
                "outputs": [spec.metadata() for spec in config.outputs],
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        model, version = self._lookup(request)
        answer: dict[str, Any] = {"name": model.name, "version": str(version.version)}
        if version.state is State.READY:
            return json_response({**answer, "ready": True})
        return json_response(
            {**answer, "ready": False, "error": _not_ready(version)}, NOT_READY
        )

    async def infer(self, request: web.Request) -> web.Response:
        model, version, config = self._ready_version(request)
        _check_content_type(request)
        state = self.state
        async with state.bodies.read(request) as body:
            if state.inflight >= state.settings.max_inflight:
                raise ApiError(
                    503,
                    f"server is busy: {state.inflight} inference requests are in flight "
                    "(PTSERVE_MAX_INFLIGHT)",
                )
            state.inflight += 1
            state.metrics.inflight.set(state.inflight)
            try:
                reply = await self._run(model, config, version, body, request.headers)
            finally:
                state.inflight -= 1
                state.metrics.inflight.set(state.inflight)
        state.metrics.inference_seconds.labels(model.name).observe(reply.inference_seconds)
        if reply.header_length is None:
            response = web.Response(body=reply.body, content_type="application/json")
        else:
            response = web.Response(
                body=reply.body,
                content_type="application/octet-stream",
                headers={HEADER_LENGTH: str(reply.header_length)},
            )
        return await state.bodies.send(request, response)

    async def _run(
        self, model: Model, config: ModelConfig, version: ModelVersion, body: bytes,
        headers: Any,
    ) -> InferReply:
        """One inference in the worker pool; through the batcher when the model has one."""
        loop = asyncio.get_running_loop()
        state, runtime = self.state, self.state.runtime
        header_length = headers.get(HEADER_LENGTH)
        if config.dynamic_batching is None:
            return await loop.run_in_executor(
                state.executor, runtime.infer, model.name, config, version, body, header_length
            )
        if len(body) <= INLINE_BYTES:
            request, args = runtime.prepare(config, body, header_length)
        else:
            request, args = await loop.run_in_executor(
                state.executor, runtime.prepare, config, body, header_length
            )
        results, seconds = await state.batcher(config, version).submit(args)
        if sum(value.numel() for value in results.values()) <= INLINE_VALUES:
            return runtime.encode(model.name, version, request, results, seconds)
        return await loop.run_in_executor(
            state.executor, runtime.encode, model.name, version, request, results, seconds
        )


def _check_content_type(request: web.Request) -> None:
    """415 unless the body is JSON (or binary tensor data), or its type is not given."""
    if "Content-Type" not in request.headers:
        return
    mime = request.content_type
    if mime in JSON_TYPES or mime.endswith("+json"):
        return
    raise ApiError(
        415,
        f"Content-Type {mime} is not accepted: send JSON as application/json, or binary "
        f"tensor data as application/octet-stream with an {HEADER_LENGTH} header",
    )


def _not_ready(version: ModelVersion) -> str:
    reason = version.reason or "it is still loading"
    return f"model '{version.model}' version {version.version} is not ready: {reason}"


class JsonErrorHandler(RequestHandler):
    """A connection handler whose errors (malformed HTTP, mostly) answer JSON.

    aiohttp calls ``handle_error`` for requests it cannot parse and for
    exceptions that escape the application; ``count`` records each answer.
    """

    count: Any = None
    header_timeout: float | None = None
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0  # received since the latest request's body ended
    _body: Any = None  # the latest request's payload

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock for the first request head (aiohttp's keep-alive timeout, set
        to the same time, covers the heads that follow an answer)."""
        super().connection_made(transport)
        if self.header_timeout is not None:
            self._head_timer = self._loop.call_later(self.header_timeout, self._head_late)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        if self._body is None or self._body.is_eof():  # between requests: head bytes
            self._head_bytes += len(data)
        super().data_received(data)
        if self._request_count > heads:
            self._body = self._messages[-1][1] if self._messages else None
            self._head_bytes = 0
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif self._head_bytes > HEAD_LIMIT and not self._force_close:
            self._head_too_large()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_too_large(self) -> None:
        """A request head past HEAD_LIMIT: answer 431 and close, reading no more of it."""
        assert self.transport is not None
        text = f"malformed HTTP request: request head is larger than {HEAD_LIMIT} bytes"
        body = json.dumps({"error": text}).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        peer = self.transport.get_extra_info("peername")
        log_refusal(self.count, 431, text, peer[0] if peer else None)
        self.force_close()

    def _head_late(self) -> None:
        """No complete request head in time: close without an answer, as a stalled
        client would not read one."""
        self._head_timer = None
        if self.transport is None or self._request_count:
            return
        peer = self.transport.get_extra_info("peername")
        logs.info("header_timeout", remote=peer[0] if peer else None,
                  seconds=self.header_timeout)
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way when the error came")
        if status >= 500:
            logs.log(logging.ERROR, "connection_error", exc_info=exc is not None,
                     status=status, remote=request.remote)
            text = f"internal error: {type(exc).__name__ if exc else HTTPStatus(status).phrase}"
            if self.count is not None:
                self.count("", status, 0.0)
        else:
            detail = (message or HTTPStatus(status).phrase).strip().splitlines()[0].rstrip(":")
            text = f"malformed HTTP request: {detail}"
            log_refusal(self.count, status, text, request.remote)
        response = error_response(status, text)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    """Makes :class:`JsonErrorHandler` connection handlers."""

    count: Any = None
    header_timeout: float | None = None

    def __call__(self) -> RequestHandler:
        handler = JsonErrorHandler(self, loop=self._loop, **self._kwargs)
        handler.count = self.count
        handler.header_timeout = self.header_timeout
        return handler


class JsonErrorRunner(web.AppRunner):
    """An AppRunner whose connections answer malformed HTTP with JSON errors and must send
    each request head within ``PTSERVE_HEADER_TIMEOUT_SECONDS`` of opening or of their
    previous answer."""

    def __init__(self, app: web.Application, state: ServerState, **kwargs: Any) -> None:
        timeout = state.settings.header_timeout_seconds
        # Bodies are inflated within their limits by ptserve.bodies, not by the parser.
        super().__init__(app, keepalive_timeout=timeout, auto_decompress=False, **kwargs)
        self._count = state.count
        self._header_timeout = timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        server.count = self._count
        server.header_timeout = self._header_timeout
        return server


def create_app(state: ServerState) -> web.Application:
    """The aiohttp application; bodies above the limit are refused with 413."""
    api = Api(state)
    app = web.Application(
        middlewares=[api.middleware], client_max_size=state.settings.max_body_bytes
    )
    app.add_routes(api.routes())
    return app
