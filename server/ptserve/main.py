"""Process lifecycle: settings, model loading, serving, and draining on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ptserve import __version__, logs
from ptserve.app import JsonErrorRunner, ServerState, create_app
from ptserve.metrics import ServerMetrics
from ptserve.repository import Repository
from ptserve.runtime import Runtime
from ptserve.settings import Settings


def _scan(settings: Settings) -> Repository:
    repository = Repository.scan(settings.model_repository)
    if repository.error:
        logs.error("repository_unusable", reason=repository.error)
    for model in repository.models.values():
        if model.error:
            logs.error("model_unusable", model=model.name, reason=model.error)
    return repository


def _join_workers(executor: ThreadPoolExecutor, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for running inferences; True if all finished."""
    waiter = threading.Thread(
        target=executor.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True
    )
    waiter.start()
    waiter.join(timeout)
    return not waiter.is_alive()


async def serve(settings: Settings) -> bool:
    """Serve until SIGTERM/SIGINT, then drain; False if the grace period ran out."""
    repository = _scan(settings)
    runtime = Runtime.create(settings.require_gpu, settings.allow_tf32, settings.torch_threads)
    executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="ptserve-infer")
    metrics = ServerMetrics(repository, runtime.gpu_stats)
    state = ServerState(settings, repository, runtime, metrics, executor)
    runner = JsonErrorRunner(
        create_app(state),
        state,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=settings.drain_seconds,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError:
        await runner.cleanup()
        executor.shutdown(wait=False)
        raise
    logs.info(
        "listening",
        version=__version__,
        host=settings.host,
        port=settings.port,
        model_repository=str(settings.model_repository),
        device="none" if runtime.blocked else str(runtime.device),
        workers=settings.workers,
        torch_threads=settings.torch_threads,
        max_inflight=settings.max_inflight,
        max_body_bytes=settings.max_body_bytes,
        max_buffered_bytes=settings.max_buffered_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
        header_timeout_seconds=settings.header_timeout_seconds,
    )
    threading.Thread(
        target=runtime.load_all, args=(repository,), name="ptserve-loader", daemon=True
    ).start()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def request_stop(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig)
    await stop.wait()

    deadline = time.monotonic() + settings.drain_seconds
    state.draining = True
    logs.info(
        "draining", signal=received[0], inflight=state.inflight,
        grace_seconds=settings.drain_seconds,
    )
    await runner.cleanup()
    state.close()
    finished = _join_workers(executor, max(0.0, deadline - time.monotonic()))
    if finished:
        logs.info("stopped")
    else:
        logs.warning("drain_timed_out", grace_seconds=settings.drain_seconds)
    return finished


def main() -> int:
    """Run the server; exit status 0 after a signal, 1 if it cannot start, 2 on bad settings."""
    logs.setup()
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        logs.error("invalid_setting", reason=str(exc))
        return 2
    try:
        finished = asyncio.run(serve(settings))
    except OSError as exc:
        logs.error("start_failed", reason=str(exc), port=settings.port)
        return 1
    if not finished:
        # Inference threads are still busy past the grace period: leave without them.
        logging.shutdown()
        os._exit(0)
    return 0
