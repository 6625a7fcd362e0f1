"""HTTP routes of the KServe v2 protocol, JSON errors, access log and request metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ptserve import __version__, logs
from ptserve.codec import HEADER_LENGTH
from ptserve.errors import ApiError
from ptserve.metrics import CONTENT_TYPE, ServerMetrics
from ptserve.modelconfig import ModelConfig
from ptserve.repository import Model, ModelVersion, Repository, State
from ptserve.settings import Settings

if TYPE_CHECKING:
    from ptserve.runtime import Runtime

SERVER_NAME = "ptserve"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "pytorch_torchscript"


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

    def not_ready_reason(self) -> str:
        """Why ``/v2/health/ready`` fails, or "" when the server is ready."""
        if self.draining:
            return "the server is shutting down"
        return self.repository.not_ready_reason()


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer."""
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )


def error_response(status: int, message: str) -> web.Response:
    """The ``{"error": ...}`` answer used for every failure."""
    return json_response({"error": message}, status)


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
        except ApiError as exc:
            message = exc.message
            response = error_response(exc.status, message)
        except web.HTTPException as exc:
            message = _http_error_message(request, exc)
            response = error_response(exc.status, message)
        except Exception as exc:  # noqa: BLE001 - answer 500 and keep serving
            logs.log(logging.ERROR, "handler_failed", exc_info=True, path=request.path)
            message = f"internal error: {type(exc).__name__}"
            response = error_response(500, message)
        seconds = time.perf_counter() - started
        name = request.match_info.get("name", "")
        model = name if name in self.state.repository.models else ""
        self.state.metrics.requests.inc((model, str(response.status)))
        self.state.metrics.request_seconds.observe(seconds, (model,))
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
        return [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.post("/v2/repository/index", self.repository_index),
            web.get("/metrics", self.metrics),
            *(web.get(p, self.model_metadata) for p in (model, versioned)),
            *(web.get(p + "/ready", self.model_ready) for p in (model, versioned)),
            *(web.post(p + "/infer", self.infer) for p in (model, versioned)),
        ]

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        reason = self.state.not_ready_reason()
        if reason:
            return json_response({"ready": False, "error": f"not ready: {reason}"}, 503)
        return json_response({"ready": True})

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response(
            {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}
        )

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            options = json.loads(body) if body.strip() else {}
        except ValueError:
            raise ApiError(400, "repository index body is not valid JSON") from None
        rows = self.state.repository.index()
        if isinstance(options, dict) and options.get("ready") is True:
            rows = [row for row in rows if row["state"] == State.READY.value]
        return json_response(rows)

    async def metrics(self, request: web.Request) -> web.Response:
        metrics = self.state.metrics
        for version in self.state.repository.versions():
            ready = 1 if version.state is State.READY else 0
            metrics.model_ready.set(ready, (version.model, str(version.version)))
        for device, used in self.state.runtime.gpu_memory():
            metrics.gpu_memory.set(used, (str(device),))
        return web.Response(body=metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

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
        return json_response({**answer, "ready": False, "error": _not_ready(version)}, 503)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.state.settings.max_body_bytes
        too_large = ApiError(
            413, f"request body is larger than the {limit}-byte limit (PTSERVE_MAX_BODY_BYTES)"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None

    async def infer(self, request: web.Request) -> web.Response:
        model, version, config = self._ready_version(request)
        state = self.state
        if state.inflight >= state.settings.max_inflight:
            raise ApiError(
                503,
                f"server is busy: {state.inflight} inference requests are in flight "
                "(PTSERVE_MAX_INFLIGHT)",
            )
        state.inflight += 1
        state.metrics.inflight.set(state.inflight)
        try:
            body = await self._read_body(request)
            reply = await asyncio.get_running_loop().run_in_executor(
                state.executor,
                state.runtime.infer,
                model.name,
                config,
                version,
                body,
                request.headers.get(HEADER_LENGTH),
            )
        finally:
            state.inflight -= 1
            state.metrics.inflight.set(state.inflight)
        state.metrics.inference_seconds.observe(reply.inference_seconds, (model.name,))
        if reply.header_length is None:
            return web.Response(body=reply.body, content_type="application/json")
        return web.Response(
            body=reply.body,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(reply.header_length)},
        )


def _not_ready(version: ModelVersion) -> str:
    reason = version.reason or "it is still loading"
    return f"model '{version.model}' version {version.version} is not ready: {reason}"


def create_app(state: ServerState) -> web.Application:
    """The aiohttp application; bodies above the limit are refused with 413."""
    api = Api(state)
    app = web.Application(
        middlewares=[api.middleware], client_max_size=state.settings.max_body_bytes
    )
    app.add_routes(api.routes())
    return app
