"""Training to a time budget: parse `3m`/`90s`/`1h`, measure, and plan steps so that everything fits.

The plan covers the whole run as the budget's clock sees it (it starts when `fit` is called): what set-up
took, then per epoch the training steps, the validation pass and the checkpoint writes. Measured throughput
varies from step to step, so the plan keeps a margin, and at each epoch's end the run checks its real pace
and shortens the rest of the schedule when it is behind. It lengthens it at most once, early on (at the first
epoch's end or in the plan's first quarter, while the one-cycle schedule is still near its start), when at least
15% more steps fit: the pace measured before training can be far too slow where the first passes pay one-time
costs (on a GPU, cuDNN's algorithm search and the allocator's first allocations: a 1-minute budget on an H200
planned 52 s and trained for 28 s). Once only, because one epoch's pace is noisy: re-planned at every epoch, a
1-minute GPU run went up and down five times. A resumed run keeps the plan it started with.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cnnkit.errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MARGIN = 0.08  # share of the remaining budget kept free for the measurement's error
LENGTHEN_AT = 1.15  # a plan is lengthened when this many times the steps left fit
LENGTHEN_UNTIL = 0.25  # ... and only at the first epoch's end or while at most this share of it is done


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
               min_steps: int = 1) -> Plan:
    """The most steps whose training, plus a validation pass and a checkpoint after each (partial) epoch, fit
    into `remaining_s` less the margin."""
    usable = remaining_s * (1 - MARGIN)
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
                    seconds_per_step: float, seconds_per_epoch_extra: float, may_lengthen: bool = True) -> int | None:
    """At an epoch's end, at the pace the run really kept: a new total when the planned one would not end inside
    the budget (shorter), or when, early in the run, at least LENGTHEN_AT times the steps left fit (longer);
    None when the plan stands."""
    left = total_steps - done_steps
    if left <= 0 or seconds_per_step <= 0:  # no pace to go by
        return None
    need = left * seconds_per_step + math.ceil(left / steps_per_epoch) * seconds_per_epoch_extra
    behind = elapsed_s + need > budget_s
    early = may_lengthen and done_steps <= max(LENGTHEN_UNTIL * total_steps, steps_per_epoch)
    if not (behind or early):
        return None
    rest = plan_steps(budget_s - elapsed_s, steps_per_epoch, seconds_per_step, seconds_per_epoch_extra).total_steps
    if behind:
        return done_steps + rest if rest < left else None
    return done_steps + rest if rest >= LENGTHEN_AT * left else None


def too_small(budget_s: float, spent_s: float, plan: Plan) -> str | None:
    """Why the budget cannot hold even a short run (None when it can)."""
    if plan.total_steps * plan.seconds_per_step + plan.seconds_per_epoch_extra > budget_s - spent_s:
        return (f"the budget of {budget_s:.0f} s is too short: set-up took {spent_s:.0f} s and one step "
                f"{plan.seconds_per_step:.2f} s; give a longer --budget, a smaller model or fewer images")
    return None
