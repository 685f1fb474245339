"""Training to a time budget: parse `3m`/`90s`/`1h`, measure, and plan steps so that everything fits.

The plan covers the whole run as the budget's clock sees it (it starts when `fit` is called): what set-up
took, then per epoch the training steps, the validation pass and the checkpoint writes. Measured throughput
varies from step to step, so the first plan keeps an 8% margin. At each epoch's end the run checks the pace it
really kept over its last three epochs and re-plans the rest of the schedule: shorter when the plan would
overrun the budget, longer when at least 15% more steps (and half an epoch) fit, keeping a 4% margin (the pace
is now measured over whole epochs). Between the two the plan stands, so that noise does not move it up and down.

History: the pace measured before training can be far too slow where the first passes pay one-time costs (on a
GPU, cuDNN's algorithm search and the allocator's first allocations: a 1-minute budget on an H200 planned 52 s and
trained for 28 s), hence lengthening. Re-planned on one epoch's pace, a 1-minute GPU run went up and down five
times; lengthening was then allowed once, early. On two busy CPU cores that rule cut 10-minute detection runs to
491 s and 471 s: slow early epochs shortened the plan, and the faster ones after could not win the time back.
A resumed run keeps the plan it started with.
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from cnnkit.errors import ConfigError
from cnnkit.runtime import autocast
from cnnkit.train.config import LONG_RECIPE_MIN_EPOCHS, resolve_config
from cnnkit.train.distributed import broadcast
from cnnkit.train.optim import build_optimizer, build_scheduler
from cnnkit.train.run import Run
from cnnkit.train.setup import build_model

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MARGIN = 0.08  # share of the remaining budget kept free for the measurement's error (the plan before training)
REPLAN_MARGIN = 0.04  # ... at an epoch's end, where the pace is measured over whole epochs
PACE_EPOCHS = 3  # the pace kept: over the last this many epochs (one slow epoch alone does not shorten a run)
LENGTHEN_AT = 1.15  # a plan is lengthened when this many times the steps left fit


def parse_budget(text: str | float | int | None) -> float | None:
    """Seconds in a budget such as '3m', '90s', '1h' or '1h30m' (a bare number is refused: say the unit)."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", s)
        if not parts or "".join(n + u for n, u in parts) != s:
            raise ConfigError(f"--budget {text!r} is not a duration: give a number with a unit, e.g. 90s, 3m, 1h or "
                              f"1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 10:
        raise ConfigError(f"a training budget must be at least 10 seconds, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Plan:
    """How many optimizer steps fit, as whole epochs and a share of the last."""

    total_steps: int
    steps_per_epoch: int
    seconds_per_step: float
    seconds_per_epoch_extra: float  # validation and checkpoint per epoch
    estimated_seconds: float  # from the planning moment to the end

    @property
    def epochs(self) -> int:
        return max(1, math.ceil(self.total_steps / self.steps_per_epoch))

    def describe(self) -> str:
        full, rest = divmod(self.total_steps, self.steps_per_epoch)
        shape = f"{full} epoch(s)" + (f" and {rest}/{self.steps_per_epoch} steps of one more" if rest else "")
        if full == 0:
            shape = f"{rest} of an epoch's {self.steps_per_epoch} steps"
        return f"{self.total_steps} steps ({shape}), about {self.estimated_seconds:.0f} s"


def plan_steps(remaining_s: float, steps_per_epoch: int, seconds_per_step: float, seconds_per_epoch_extra: float,
               min_steps: int = 1, margin: float = MARGIN) -> Plan:
    """The most steps whose training, plus a validation pass and a checkpoint after each (partial) epoch, fit
    into `remaining_s` less the margin."""
    usable = remaining_s * (1 - margin)
    # steps s with epochs e = ceil(s / spe) must satisfy s * t_step + e * t_extra <= usable; per full epoch
    # the cost is spe * t_step + t_extra, and the last (partial) epoch pays t_extra once more.
    per_epoch = steps_per_epoch * seconds_per_step + seconds_per_epoch_extra
    full = max(0, int(usable // per_epoch))
    left = usable - full * per_epoch - seconds_per_epoch_extra  # a partial epoch pays its own extra
    extra_steps = max(0, min(steps_per_epoch - 1, int(left // seconds_per_step))) if left > 0 else 0
    total = full * steps_per_epoch + extra_steps
    if total < min_steps:
        total = min_steps
    epochs = max(1, math.ceil(total / steps_per_epoch))
    estimate = total * seconds_per_step + epochs * seconds_per_epoch_extra
    return Plan(total, steps_per_epoch, seconds_per_step, seconds_per_epoch_extra, estimate)


def replanned_total(budget_s: float, elapsed_s: float, done_steps: int, total_steps: int, steps_per_epoch: int,
                    seconds_per_step: float, seconds_per_epoch_extra: float) -> int | None:
    """At an epoch's end, at the pace the run really kept: a new total when the planned one would not end inside
    the budget (shorter), or when at least LENGTHEN_AT times the steps left, and half an epoch more, fit (longer);
    None when the plan stands."""
    left = total_steps - done_steps
    if left <= 0 or seconds_per_step <= 0:  # no pace to go by
        return None
    need = left * seconds_per_step + math.ceil(left / steps_per_epoch) * seconds_per_epoch_extra
    rest = plan_steps(budget_s - elapsed_s, steps_per_epoch, seconds_per_step, seconds_per_epoch_extra,
                      margin=REPLAN_MARGIN).total_steps
    if elapsed_s + need > budget_s:  # behind
        return done_steps + rest if rest < left else None
    gain = rest - left  # longer only by a real share of the rest and half an epoch at least: no churn at the end
    return done_steps + rest if rest >= LENGTHEN_AT * left and gain >= steps_per_epoch / 2 else None


def too_small(budget_s: float, spent_s: float, plan: Plan) -> str | None:
    """Why the budget cannot hold even a short run (None when it can)."""
    if plan.total_steps * plan.seconds_per_step + plan.seconds_per_epoch_extra > budget_s - spent_s:
        return (f"the budget of {budget_s:.0f} s is too short: set-up took {spent_s:.0f} s and one step "
                f"{plan.seconds_per_step:.2f} s; give a longer --budget, a smaller model or fewer images")
    return None


def budget_clock() -> float:
    """The clock a budget is counted on (a function of its own so that tests can run it fake)."""
    return time.perf_counter()


def measure_pace(run: Run, min_steps: int = 4, max_steps: int = 30) -> tuple[float, float]:
    """Seconds per training step, and per validation pass plus checkpoint, of this run on this machine,
    measured on a copy of its model and optimizer with its own batches and objective (the run's weights and
    random state are left as they were). Steps are timed after two warm-up steps, for about 2% of the budget."""
    cfg, objective = run.cfg, run.objective
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    model = copy.deepcopy(run.model).train()
    optimizer = build_optimizer(model, cfg)
    stepper = torch.compile(model) if cfg.compile else model
    run.train_loader.set_epoch(0)
    times: list[float] = []
    deadline = time.perf_counter() + 0.02 * (cfg.budget or 0)
    for i, (x, y) in enumerate(run.train_loader):
        t = time.perf_counter()
        x, target = objective.batch(x, run.task.targets(x, y))
        with autocast(run.device, run.amp):
            outputs = objective.forward(stepper, x, target)  # a detector takes its targets
        loss = objective.loss(outputs, target, x)  # a distillation step runs its teachers too
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())  # wait for the device
        if i >= 2:
            times.append(time.perf_counter() - t)
        if len(times) >= max_steps or (len(times) >= min_steps and time.perf_counter() > deadline):
            break
    if not times:  # an epoch shorter than the warm-up: time what there was
        times = [time.perf_counter() - t]
    step_s = sorted(times)[len(times) // 2] * 1.05  # median; the real loop also updates EMA and metrics
    extra_s = _validation_seconds(run, model) + _checkpoint_seconds(model)
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])
    return step_s, extra_s


def _validation_seconds(run: Run, model: torch.nn.Module) -> float:
    """A validation pass's seconds, from its first two batches."""
    if run.val_loader is None:
        return 0.0
    model.eval()
    t = time.perf_counter()
    with torch.no_grad(), autocast(run.device, run.amp):
        for n, (x, y) in enumerate(run.val_loader):
            x, _ = run.objective.batch(x, run.task.targets(x, y))
            run.task.infer(model, x, run.cfg.tta and run.objective.flip_invariant)
            if n == 1:
                break
    return (time.perf_counter() - t) / (n + 1) * len(run.val_loader)


def _checkpoint_seconds(model: torch.nn.Module) -> float:
    """Writing best, last and the training state (about twice the weights): four times the weights' write."""
    from safetensors.torch import save

    t = time.perf_counter()
    save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    return 4 * (time.perf_counter() - t) + 0.05


def plan_budget(run: Run) -> None:
    """Measure this machine's pace on the run's own model and data, then fix the run's length (kept in
    config.yaml and the checkpoints, so a resumed run keeps it). If the long recipe, chosen for the budget,
    fits fewer than LONG_RECIPE_MIN_EPOCHS epochs, the run takes the fast recipe instead (its model built again)."""
    cfg = run.cfg
    step_s, extra_s = broadcast(measure_pace(run), run.ranks)  # one plan for every rank: rank 0's
    spent = broadcast(budget_clock() - run.started, run.ranks)
    plan = plan_steps(cfg.budget - spent, run.steps_per_epoch, step_s, extra_s)
    problem = too_small(cfg.budget, spent, plan)
    if problem:
        raise ConfigError(problem)
    if run.fallback and plan.total_steps < LONG_RECIPE_MIN_EPOCHS * run.steps_per_epoch:
        # the long recipe's wider net would get too few epochs on this machine: the fast one does better
        narrow = resolve_config(run.fallback)
        run.cfg = replace(narrow, **{k: getattr(cfg, k) for k in ("out", "data", "data_dir", "init_from")})
        run.fallback = None
        run.objective = run.task.objective(run.cfg)
        build_model(run)
        plan_budget(run)
        run.plan_note += (f" (the long recipe fitted only {plan.total_steps / run.steps_per_epoch:.1f} epochs "
                          f"here, fewer than {LONG_RECIPE_MIN_EPOCHS}: trains the fast recipe)")
        return
    run.cfg = replace(cfg, max_steps=plan.total_steps, epochs=plan.epochs)
    run.plan_note = (f"set-up took {spent:.1f} s; {step_s * 1e3:.0f} ms per step, {extra_s:.1f} s per "
                     f"evaluation and checkpoint; planned {plan.describe()}")
    run.scheduler = build_scheduler(run.cfg, run.optimizer, run.total_steps, run.steps_per_epoch)


def keep_to_budget(run: Run, epoch: int) -> bool:
    """At an epoch's end, at the pace of the last three epochs: if the run is behind its plan (the machine got
    slower than measured), shorten what is left so that it still ends inside the budget; if it is well ahead (the
    measurement paid one-time costs, or slow epochs passed), lengthen it. The schedule is re-planned from here.
    True if the plan changed."""
    cfg = run.cfg
    if cfg.budget is None or run.resuming or epoch + 1 >= run.epochs:
        return False
    elapsed = budget_clock() - run.started
    done = (epoch + 1) * run.steps_per_epoch
    extra = budget_clock() - run.epoch_clock - run.last_train_s  # validation, checkpoint, callbacks
    run.paces = (run.paces + [(run.last_train_s, run.last_epoch_steps, extra)])[-PACE_EPOCHS:]
    pace = sum(p[0] for p in run.paces) / max(sum(p[1] for p in run.paces), 1)
    extra = sum(p[2] for p in run.paces) / len(run.paces)
    total = broadcast(replanned_total(cfg.budget, elapsed, done, run.total_steps, run.steps_per_epoch, pace,
                                      extra), run.ranks)  # rank 0 decides
    if total is None:
        return False
    longer, before, epochs_before = total > run.total_steps, run.total_steps, run.epochs
    pace_kept = f"{pace * 1e3:.0f} ms per step, {extra:.1f} s per evaluation and checkpoint"
    run.plan_note = ((run.plan_note or "") + f"; after epoch {epoch + 1}, at the pace kept ({pace_kept}), "
                     f"{'lengthened' if longer else 'shortened'} to {total} steps")
    run.cfg = replace(cfg, max_steps=total, epochs=math.ceil(total / run.steps_per_epoch))
    if run.bar is not None:  # the bar's length changes: say why, once, on the line above it
        why = ("the run is well ahead of its plan" if longer else "the rest of the plan would overrun the budget")
        run.bar.note(f"budget re-planned after epoch {epoch + 1}: {why} ({pace_kept}; {elapsed:.0f} s of "
                     f"{cfg.budget:.0f} s spent), {'lengthened' if longer else 'shortened'} from {before} steps "
                     f"({epochs_before} epochs) to {total} ({run.epochs} epochs)")
    run.scheduler = build_scheduler(run.cfg, run.optimizer, run.total_steps, run.steps_per_epoch, done)
    return True
