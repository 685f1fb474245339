"""Dynamic batching: concurrent requests for one model gathered into one forward pass.

Why a small batcher of our own rather than a library: the libraries that batch well bring their own server
and process model (LitServe, Ray Serve, Triton, TorchServe), and the stand-alone async batching helpers on
PyPI count requests rather than images, have no bounded queue that refuses work (our 503) and are not kept
up. What is needed here is about eighty lines: an asyncio queue bounded in images, one consumer task per
model that waits up to `max_delay` for a batch to fill up to `max_batch` images, and one worker thread per
model that runs the forward pass off the event loop (so health checks and metrics answer while it runs).

A request of several images counts them all against `max_batch` and is never split; a request larger than
`max_batch` runs as a batch of its own. A request that timed out while queued is dropped before its batch
runs. Results are handed back per request in the order its images came.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


class QueueFull(Exception):
    """The queue holds `max_queue` images already: the caller answers 503 with Retry-After."""


@dataclass
class _Item:
    x: torch.Tensor  # n×C×H×W
    args: Any  # per-request extras the run function needs (targets), or None
    future: asyncio.Future


class Batcher:
    """`await batcher.submit(x, args)` returns `run(batch_x, [args...], sizes)`'s share for this request.

    `run(x, args_list, sizes)` gets the concatenated images, each request's `args` and image count, and
    returns one result per request (a list); it runs in this batcher's own worker thread.
    `on_batch(images, seconds)` is called after each batch (metrics)."""

    def __init__(self, run: Callable[[torch.Tensor, list[Any], list[int]], list[Any]], max_batch: int = 32,
                 max_delay_s: float = 0.005, max_queue: int = 256,
                 on_batch: Callable[[int, float], None] | None = None,
                 executor: concurrent.futures.Executor | None = None):
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_delay >= 0")
        self.run, self.max_batch, self.max_delay_s, self.max_queue = run, max_batch, max_delay_s, max_queue
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.queued_images = 0
        # one thread per model, shared by its batchers: explanations hook the model's layers, so a prediction
        # must never run on the same model at the same time
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cnnkit-batch")
        self._task: asyncio.Task | None = None
        self._held: _Item | None = None  # an item that did not fit the last batch: first of the next

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop after the batch in progress (uvicorn has already waited for in-flight requests)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._own_executor:
            self.executor.shutdown(wait=True)

    async def submit(self, x: torch.Tensor, args: Any = None, timeout: float | None = None) -> Any:
        """Queue `x` and wait for its result; QueueFull when the queue is full, TimeoutError after `timeout`."""
        n = len(x)
        if self.queued_images + n > self.max_queue and self.queued_images > 0:
            raise QueueFull(f"{self.queued_images} images queued (limit {self.max_queue})")
        self.start()
        item = _Item(x, args, asyncio.get_running_loop().create_future())
        self.queued_images += n
        self.queue.put_nowait(item)
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            item.future.cancel()  # the consumer skips it if it has not run yet
            raise

    def _take(self, item: _Item) -> bool:
        self.queued_images -= len(item.x)
        return not item.future.done()  # timed out or cancelled while waiting: drop it

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._held or await self.queue.get()
            self._held = None
            if not self._take(first):
                continue
            batch, size = [first], len(first.x)
            # the delay counts from when this batch began to form, not from when its oldest request arrived:
            # counting from arrival, the requests that queued up while the previous batch ran left at once in
            # small batches, and under 8-32 closed-loop clients (ResNet-9) throughput fell by a third and
            # latency rose; the wait gathers them into fuller batches
            deadline = loop.time() + self.max_delay_s
            while size < self.max_batch:
                try:
                    item = self.queue.get_nowait() if self.queue.qsize() else await asyncio.wait_for(
                        self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if not self._take(item):
                    continue
                if size + len(item.x) > self.max_batch:  # would overflow: it starts the next batch
                    self._held = item
                    self.queued_images += len(item.x)
                    break
                batch.append(item)
                size += len(item.x)
                if loop.time() >= deadline:
                    break
            await self._run(batch, size)

    async def _run(self, batch: list[_Item], size: int) -> None:
        x = batch[0].x if len(batch) == 1 else torch.cat([b.x for b in batch])
        t = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run, x, [b.args for b in batch], [len(b.x) for b in batch])
        except Exception as e:  # a failing batch fails its own requests, never the batcher
            for b in batch:
                if not b.future.done():
                    b.future.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(size, time.perf_counter() - t)
        for b, r in zip(batch, results):
            if not b.future.done():
                b.future.set_result(r)
