"""Dynamic batching: concurrent requests to one model version run as one batch.

Requests wait in a queue; one batch at a time is taken from its head (requests
whose inputs agree beyond the first dimension, up to ``max_batch_size`` in
all), run in the worker pool, and its outputs split back. A batch leaves as
soon as the queue holds the largest preferred batch size (or
``max_batch_size``), or when its oldest request has waited
``max_queue_delay_microseconds``. While a batch runs, the next one gathers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch

from ptserve.modelconfig import DynamicBatching

Outputs = dict[str, torch.Tensor]
RunBatch = Callable[[list[list[torch.Tensor]]], tuple[list[Outputs], float]]


@dataclass
class _Pending:
    """One request in the queue: its inputs, batch size and the future of its outputs."""

    args: list[torch.Tensor]
    future: asyncio.Future[tuple[Outputs, float]]
    arrived: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return self.args[0].shape[0]

    @property
    def key(self) -> tuple[tuple[int, ...], ...]:
        """Requests can share a batch only when their inputs agree beyond dim 0."""
        return tuple(tuple(arg.shape[1:]) for arg in self.args)


class Batcher:
    """The queue and batch loop of one model version."""

    def __init__(
        self,
        run: RunBatch,
        executor: Executor,
        max_batch_size: int,
        batching: DynamicBatching,
        observe_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._run = run
        self._executor = executor
        self._max = max_batch_size
        self._delay = batching.max_queue_delay_seconds
        self._target = max(batching.preferred_batch_sizes, default=max_batch_size)
        self._observe_batch = observe_batch
        self._queue: list[_Pending] = []
        self._queued = 0  # the batch sizes of the queue's requests, summed
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0  # the queued size that ends the batch loop's wait
        self._task: asyncio.Task[None] | None = None

    async def submit(self, args: list[torch.Tensor]) -> tuple[Outputs, float]:
        """This request's outputs and the batch's forward seconds, once its batch ran."""
        item = _Pending(args, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._queued += item.size
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="ptserve-batcher")
        elif self._queued >= self._wanted:
            self._wake()
        return await item.future

    def close(self) -> None:
        """Stop the batch loop (requests still queued are cancelled)."""
        if self._task is not None:
            self._task.cancel()
        for item in self._queue:
            item.future.cancel()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, wanted: int, timeout: float | None = None) -> None:
        """Until the queue holds a request and ``wanted`` in all, or ``timeout`` passed."""
        if self._queue and self._queued >= wanted:
            return
        loop = asyncio.get_running_loop()
        self._waiter, self._wanted = loop.create_future(), wanted
        timer = None if timeout is None else loop.call_later(timeout, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _gather(self) -> None:
        """Wait for a full batch, or for the oldest request's delay to pass."""
        remaining = self._queue[0].arrived + self._delay - time.monotonic()
        if remaining > 0:
            await self._wait(self._target, remaining)

    def _take(self) -> list[_Pending]:
        """The next batch: queued requests matching the oldest one, up to max_batch_size."""
        self._queue = [item for item in self._queue if not item.future.done()]
        self._queued = sum(item.size for item in self._queue)
        if not self._queue:
            return []
        key, total, batch, rest = self._queue[0].key, 0, [], []
        for item in self._queue:
            if item.key == key and total + item.size <= self._max:
                batch.append(item)
                total += item.size
            else:
                rest.append(item)
        self._queue = rest
        self._queued -= total
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait(0)
            await self._gather()
            batch = self._take()
            if not batch:
                continue
            self._observe_batch(sum(item.size for item in batch))
            try:
                results, seconds = await loop.run_in_executor(
                    self._executor, self._run, [item.args for item in batch]
                )
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, outputs in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result((outputs, seconds))
