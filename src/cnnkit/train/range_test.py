"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3).

Train the run's model, from its initialization, on its own batches while the learning rate grows
exponentially from `start` to `end`; record the loss, smoothed by an exponential moving average with bias
correction. The loss first stalls (rate too low), then falls, then climbs (too high); the test stops once the
smoothed loss exceeds four times its best. Proposed peak rate: a tenth of the rate at the smoothed loss's
minimum (where it still falls steadily), never above the rate where it fell fastest times three. The run's
weights are not kept: the test starts training from a copy and leaves nothing behind but its table and plot.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from cnnkit.errors import ConfigError
from cnnkit.runtime import autocast


@dataclass
class LrFindResult:
    lrs: list[float]
    losses: list[float]  # raw loss per step
    smoothed: list[float]  # bias-corrected exponential moving average
    suggestion: float  # proposed peak learning rate
    steepest: float  # rate where the smoothed loss fell fastest
    min_loss_lr: float  # rate at the smoothed loss's minimum
    stopped_early: bool  # the loss blew up before `end` was reached
    steps_planned: int = 0  # the steps the test would have run to `end`
    stopped_because: str = ""  # why it stopped early, in words
    lr: float | None = None  # the rate the run's config trains with (the recipe's, unless --lr was given)
    model_recipe: str | None = None  # the recipe that rate comes from

    def csv(self) -> str:
        rows = ["step,lr,loss,smoothed_loss"]
        rows += [f"{i},{lr:.6g},{loss:.6g},{s:.6g}" for i, (lr, loss, s) in
                 enumerate(zip(self.lrs, self.losses, self.smoothed))]
        return "\n".join(rows) + "\n"


def range_test(run: Any, steps: int = 100, start: float = 1e-6, end: float = 10.0,
               beta: float | None = None) -> LrFindResult:
    """The range test on a prepared run (`prepare_run`: its data, model, objective and config), over `steps`
    steps. The smoothing
    `beta` defaults to 1 - 4/steps (0.96 for 100 steps), so its lag stays a small share of the range."""
    from cnnkit.train.optim import build_optimizer

    if not (0 < start < end) or steps < 10:
        raise ConfigError("the learning-rate range test needs 0 < start < end and at least 10 steps")
    cfg, device = run.cfg, run.device
    model = copy.deepcopy(run.model).train()
    optimizer = build_optimizer(model, cfg)
    factor = (end / start) ** (1 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    beta = beta if beta is not None else min(0.98, max(0.7, 1 - 4 / steps))
    avg, best, stopped, why = 0.0, math.inf, False, ""
    epoch = 0
    while len(lrs) < steps and not stopped:
        run.train_loader.set_epoch(epoch)
        epoch += 1
        for x, y in run.train_loader:
            lr = start * factor ** len(lrs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, target = run.objective.batch(x, run.task.targets(x, y))
            with autocast(device, run.amp):
                outputs = model(x)
            loss = run.objective.loss(outputs, target, x)  # what training minimizes
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            value = float(loss.detach())
            lrs.append(lr)
            losses.append(value)
            if not math.isfinite(value):
                smoothed.append(math.inf)
                stopped, why = True, f"the loss became {value} at lr {lr:.3g}"
                break
            avg = beta * avg + (1 - beta) * value
            smoothed.append(avg / (1 - beta ** len(lrs)))
            best = min(best, smoothed[-1])
            if len(lrs) > 10 and smoothed[-1] > 4 * best:  # diverged: higher rates tell nothing more
                stopped, why = True, (f"the loss diverged at lr {lr:.3g} (smoothed, {smoothed[-1]:.3g} against its "
                                      f"lowest {best:.3g}: more than 4×)")
                break
            if len(lrs) >= steps:
                break
    return replace(_propose(lrs, losses, smoothed, stopped), steps_planned=steps, stopped_because=why)


def _propose(lrs: list[float], losses: list[float], smoothed: list[float], stopped: bool) -> LrFindResult:
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    if len(finite) < 5:
        raise ConfigError("the learning-rate range test diverged at once; start it lower (the model or data may be "
                          "broken)")
    skip = max(1, len(finite) // 10)  # the first steps' average is still mostly one batch
    usable = finite[skip:]
    i_min = min(usable, key=lambda i: smoothed[i])
    # the fastest fall in log(lr): the most negative slope of the smoothed loss up to its minimum
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
              for i in usable[:-1] if i - 1 >= 0 and i <= i_min and i + 1 < len(smoothed)]
    idx = [i for i in usable[:-1] if i - 1 >= 0 and i <= i_min and i + 1 < len(smoothed)]
    steep = idx[min(range(len(slopes)), key=slopes.__getitem__)] if slopes else i_min
    suggestion = min(lrs[i_min] / 10, lrs[steep] * 3)
    return LrFindResult(lrs, losses, smoothed, suggestion, lrs[steep], lrs[i_min], stopped)


def plot(result: LrFindResult, title: str) -> bytes:
    """PNG of the loss against the learning rate (log scale), with the proposed rate marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, color="0.8", lw=1, label="loss")
    finite = [(lr, s) for lr, s in zip(result.lrs, result.smoothed) if math.isfinite(s)]
    ax.plot(*zip(*finite), lw=2, label="smoothed loss")
    ax.axvline(result.suggestion, color="tab:red", ls="--", label=f"proposed lr {result.suggestion:.3g}")
    ax.set_xscale("log")
    top = max(s for _, s in finite)
    ax.set_ylim(min(s for _, s in finite) * 0.9, min(top, 4 * min(s for _, s in finite)) * 1.1)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def lr_find(config: Any = None, *, steps: int = 100, start: float = 1e-6, end: float = 10.0,
            out: str | None = None, say: Callable[[str], None] | None = None, **options: Any) -> LrFindResult:
    """Run the range test for the model, data and recipe that `fit(**options)` would train; with `out`, write
    lr_find.csv and lr_find.png into that folder (claimed as cnnkit's, as every output folder). `say` is told,
    once the run is set up, what the test is doing."""
    from pathlib import Path

    from cnnkit.train.rundir import resolve_run
    from cnnkit.train.setup import prepare_run

    if out is not None:  # refusals before the range test: a refused command writes nothing
        from cnnkit.artifacts.files import check_writable

        check_writable([Path(out).expanduser() / "lr_find.csv", Path(out).expanduser() / "lr_find.png"])
    cfg, _ = resolve_run(config, None, options)
    run = prepare_run(cfg)
    if say is not None:
        say(f"lr-find: {cfg.model} on {cfg.data}: training a copy from its initialization for up to {steps} steps, "
            f"the learning rate growing from {start:g} to {end:g}; it stops early where the loss diverges")
    result = replace(range_test(run, steps, start, end), lr=cfg.lr, model_recipe=cfg.model_recipe)
    if out is not None:
        from cnnkit.artifacts import atomic_write_bytes, atomic_write_text, claim_dir

        folder = claim_dir(Path(out)).root
        atomic_write_text(folder / "lr_find.csv", result.csv())
        atomic_write_bytes(folder / "lr_find.png", plot(result, f"{cfg.model} on {cfg.data}: learning-rate range test"))
    return result
