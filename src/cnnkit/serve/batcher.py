"""Dynamic batching: concurrent requests for one model gathered into one forward pass.

Why a small batcher of our own rather than a library: the libraries that batch well bring their own server
and process model (LitServe, Ray Serve, Triton, TorchServe), and the stand-alone async batching helpers on
PyPI count requests rather than images, have no bounded queue that refuses work (our 503) and are not kept
up. What is needed here is a queue bounded in images and a drain that runs in the model's own thread (so
health checks and metrics answer while a batch runs), about a hundred lines.

How a batch forms: it leaves as soon as it holds `max_batch` images, or `max_delay` after it began to form,
that is after its first request arrived or the previous batch ended, whichever came later; so a batch that
starts when the model frees waits for the requests its clients are about to send. (Counting from the arrival
alone, Triton's rule, was tried: the requests that queued while a batch ran left at once, and in a quick run of
benchmarks/serve.py ResNet-18 in bf16 at 32 clients served 55% of the offline rate, against 74% now.) While a batch runs, the
next one fills; the model's thread waits for it and takes it itself, without a hand-over through the event
loop (busy reading requests under load). Only the results go back through the loop. A request that arrives
while the model is idle and no other request is in progress (`others() == 0`, a single client) runs at once:
nobody could join its batch, so waiting would only add `max_delay` to its latency.

A request of several images counts them all against `max_batch` and is never split; a request larger than
`max_batch` runs as a batch of its own. A request that timed out while queued is dropped before its batch
runs. Results are handed back per request in the order its images came.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
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
    arrived: float  # time.monotonic() at submission (the model's thread compares it too)


class Batcher:
    """`await batcher.submit(x, args)` returns `run(batch_x, [args...], sizes)`'s share for this request.

    `run(x, args_list, sizes)` gets the concatenated images, each request's `args` and image count, and
    returns one result per request (a list); it runs in `executor`'s thread (one thread per model, shared by
    its batchers: explanations hook the model's layers, so a prediction must never run on the same model at
    the same time). `on_batch(images, seconds)` is called after each batch (metrics). `others()`: how many
    other requests are in progress in the server (None: always wait for company)."""

    def __init__(self, run: Callable[[torch.Tensor, list[Any], list[int]], list[Any]], max_batch: int = 32,
                 max_delay_s: float = 0.005, max_queue: int = 256,
                 on_batch: Callable[[int, float], None] | None = None,
                 executor: concurrent.futures.Executor | None = None, others: Callable[[], int] | None = None):
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_delay >= 0")
        self.run, self.max_batch, self.max_delay_s, self.max_queue = run, max_batch, max_delay_s, max_queue
        self.on_batch, self.others = on_batch, others
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cnnkit-batch")
        self._pending: deque[_Item] = deque()  # appended on the loop, taken in the model's thread
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # a waiting drain is woken when a batch is full
        self.queued_images = 0  # images in _pending (read on the loop for the 503 decision)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._job: asyncio.Future | None = None  # a drain queued or running in the executor
        self._timer: asyncio.TimerHandle | None = None
        self._free_since = 0.0  # time.monotonic() when the last batch ended

    async def submit(self, x: torch.Tensor, args: Any = None, timeout: float | None = None) -> Any:
        """Queue `x` and wait for its result; QueueFull when the queue is full, TimeoutError after `timeout`."""
        n = len(x)
        if self.queued_images + n > self.max_queue and self.queued_images > 0:
            raise QueueFull(f"{self.queued_images} images queued (limit {self.max_queue})")
        loop = self._loop = asyncio.get_running_loop()
        item = _Item(x, args, loop.create_future(), time.monotonic())
        with self._cond:
            self._pending.append(item)
            self.queued_images += n
            if self.queued_images >= self.max_batch:
                self._cond.notify()
        self._wake()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            item.future.cancel()  # the drain skips it if it has not run yet
            raise

    async def stop(self) -> None:
        """Stop after the batch in progress (uvicorn has already waited for in-flight requests)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._job is not None:
            try:
                await asyncio.shield(self._job)
            except Exception:  # noqa: BLE001 - its requests got the error already
                pass
        with self._lock:
            left, self._pending = list(self._pending), deque()
            self.queued_images = 0
        for item in left:
            if not item.future.done():
                item.future.cancel()
        if self._own_executor:
            self.executor.shutdown(wait=True)

    # -- on the event loop ---------------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Start a drain now, or when the oldest request's wait is up; nothing while a drain is queued or
        running (it takes what is waiting when its batch ends)."""
        if self._job is not None:
            return
        with self._lock:  # the model's thread may be taking from the queue (a drain that is ending)
            if not self._pending:
                return
            deadline = max(self._pending[0].arrived, self._free_since) + self.max_delay_s
            alone = len(self._pending) == 1
        now = time.monotonic()
        if (self.queued_images >= self.max_batch or now >= deadline
                or (alone and self.others is not None and self.others() == 0)):
            self._dispatch()
        elif self._timer is None:
            self._timer = self._loop.call_later(deadline - now, self._dispatch)

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._job is None and self._pending:
            self._job = self._loop.run_in_executor(self.executor, self._drain)
            self._job.add_done_callback(self._drained)

    def _drained(self, _job: asyncio.Future) -> None:
        self._job = None
        self._wake()  # requests that came after the drain's last batch was taken

    def _deliver(self, batch: list[_Item], size: int, seconds: float, results: list[Any] | BaseException) -> None:
        if isinstance(results, BaseException):  # a failing batch fails its own requests, never the batcher
            for b in batch:
                if not b.future.done():
                    b.future.set_exception(results)
            return
        if self.on_batch is not None:
            self.on_batch(size, seconds)
        for b, r in zip(batch, results):
            if not b.future.done():
                b.future.set_result(r)

    # -- in the model's thread -----------------------------------------------------------------------------------

    def _take(self) -> tuple[list[_Item], int]:
        """The next batch from the front of the queue: whole requests, up to max_batch images (the first always)."""
        batch: list[_Item] = []
        size = 0
        with self._lock:
            while self._pending:
                item = self._pending[0]
                n = len(item.x)
                if item.future.done():  # timed out or cancelled while waiting: drop it
                    self._pending.popleft()
                    self.queued_images -= n
                    continue
                if batch and size + n > self.max_batch:  # would overflow: it starts the next batch
                    break
                self._pending.popleft()
                self.queued_images -= n
                batch.append(item)
                size += n
        return batch, size

    def _wait_for_next(self) -> bool:
        """After a batch: wait (in the model's thread, at most `max_delay`) until the next batch is full or its
        time to form is up; False when nothing waits (the loop starts the next drain when a request comes)."""
        with self._cond:
            while True:
                if not self._pending:
                    return False
                deadline = max(self._pending[0].arrived, self._free_since) + self.max_delay_s
                now = time.monotonic()
                if self.queued_images >= self.max_batch or now >= deadline:
                    return True
                self._cond.wait(deadline - now)

    def _drain(self) -> None:
        loop = self._loop
        while True:
            batch, size = self._take()
            if not batch:
                return
            x = batch[0].x if len(batch) == 1 else torch.cat([b.x for b in batch])
            t = time.perf_counter()
            try:
                results: list[Any] | BaseException = self.run(x, [b.args for b in batch], [len(b.x) for b in batch])
            except Exception as e:  # noqa: BLE001
                results = e
            self._free_since = time.monotonic()
            loop.call_soon_threadsafe(self._deliver, batch, size, time.perf_counter() - t, results)
            if not self._wait_for_next():
                return
