"""What the routes work on: the served models, a batcher per model and kind of work, the options and the
metrics; and the way work enters a batcher (refused when the queue is full, bounded in time)."""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from fastapi import Request

from cnnkit.errors import CnnkitError, close_matches, error_line
from cnnkit.serve.batcher import Batcher, QueueFull
from cnnkit.serve.metrics import Metrics
from cnnkit.serve.models import ServedModel
from cnnkit.serve.options import ServeOptions
from cnnkit.serve.problems import Problem


class Service:
    """The models, their batchers and the options: what the routes work on."""

    def __init__(self, models: dict[str, ServedModel], options: ServeOptions):
        self.models, self.options, self.metrics = models, options, Metrics()
        self.ready = False
        self.in_progress = 0  # HTTP requests between the Guard's entry and their answer (the batchers ask)
        self.batchers: dict[tuple[str, str, str], Batcher] = {}
        self.explorers: dict[str, Any] = {}

    def model(self, name: str) -> ServedModel:
        """The model served as `name`; 404 naming the served ones otherwise."""
        if name not in self.models:
            raise Problem(404, f"unknown model {name!r}{close_matches(name, self.models)}; served: "
                               f"{', '.join(self.models)}")
        return self.models[name]

    def batcher(self, m: ServedModel, kind: str, method: str = "", layer: str = "",
                max_batch: int | None = None) -> Batcher:
        """The batcher of `m` for `kind` (predict or explain, the latter per method and layer; a restoration
        model's predictions per image size, in `layer`), made once; `max_batch` below the service's own."""
        key = (m.name, kind, f"{method}@{layer}")
        if key not in self.batchers:
            o = self.options
            observe = (lambda n, s, name=m.name, kind=kind: (self.metrics.batch.labels(name, kind).observe(n),
                                                             self.metrics.batch_seconds.labels(name, kind).observe(s)))
            run = m.predict_batch if kind == "predict" else m.explain_batch
            # explanations take far longer per image than predictions: smaller batches keep latency bounded
            most = o.max_batch if kind == "predict" else max(1, min(o.max_batch, 8))
            max_batch = min(max_batch or most, most)
            self.batchers[key] = Batcher(run, max_batch, o.max_delay_ms / 1e3, o.max_queue, observe, m.executor,
                                         others=lambda: self.in_progress - 1)
        return self.batchers[key]

    def queued(self, name: str) -> int:
        """Images waiting in all of the model's batchers."""
        return sum(b.queued_images for k, b in self.batchers.items() if k[0] == name)

    def refuse_if_full(self, m: ServedModel, n: int = 1) -> None:
        """503 when `n` more images would overflow the model's queue: checked before the body is parsed and
        decoded too, so that refusing work under overload costs little."""
        if self.queued(m.name) + n > self.options.max_queue and self.queued(m.name) > 0:
            raise Problem(503, f"model {m.name!r} is overloaded ({self.queued(m.name)} images queued); retry "
                               f"shortly", {"Retry-After": "1"})

    async def submit(self, m: ServedModel, b: Batcher, x: torch.Tensor, args: Any = None) -> Any:
        """The batcher's answer for the images `x`: 503 when the queue is full, 504 past --timeout, 422 for
        what the model refuses."""
        self.refuse_if_full(m, len(x))
        self.metrics.queue.labels(m.name).set(self.queued(m.name) + len(x))
        try:
            return await b.submit(x, args, self.options.timeout_s)
        except QueueFull:
            raise Problem(503, f"model {m.name!r} is overloaded; retry shortly", {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise Problem(504, f"no answer within {self.options.timeout_s:g} s (the server is busy); retry "
                               f"later or raise --timeout") from None
        except CnnkitError as e:
            raise Problem(422, error_line(e)) from None
        finally:
            self.metrics.queue.labels(m.name).set(self.queued(m.name))


def service_of(request: Request) -> Service:
    """The service of the app that received `request`."""
    return request.app.state.service

