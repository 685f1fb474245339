"""Training to a time budget: the planner on a fake clock, the plan in a real run, and resume keeping it."""

from __future__ import annotations

import importlib
import math

import pytest
import yaml

from cnnkit.errors import ConfigError
from cnnkit.train import fit, parse_budget, resolve_config
from cnnkit.train.budget import MARGIN, REPLAN_MARGIN, plan_steps, replanned_total
from tests.conftest import TINY

fit_module = importlib.import_module("cnnkit.train.trainer")
budget_module = importlib.import_module("cnnkit.train.budget")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("3m", 180), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150),
                                           (" 10M ", 600)])
def test_budget_durations(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["3", "3 minutes", "m", "-3m", "5s", "3d"])
def test_bad_budgets_are_refused_with_the_form_to_use(text):
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(text)


def simulate(plan, spent: float, step_s: float, extra_s: float) -> float:
    """What a fake clock reads at the run's end: set-up, each step, and a validation + checkpoint per epoch."""
    clock = spent
    for step in range(plan.total_steps):
        clock += step_s
        if (step + 1) % plan.steps_per_epoch == 0 or step + 1 == plan.total_steps:
            clock += extra_s
    return clock


@pytest.mark.parametrize("budget, spent, step_s, extra_s, steps_per_epoch", [
    (180, 4.0, 0.012, 0.8, 211),   # fast machine, Fashion-MNIST-sized epochs: many epochs
    (180, 4.0, 0.35, 2.5, 211),    # slow machine: under three epochs, the last one partial
    (180, 9.0, 2.0, 6.0, 211),     # very slow: part of one epoch
    (600, 5.0, 0.05, 1.0, 17),     # tiny epochs: the per-epoch cost dominates
    (30, 3.0, 0.1, 0.5, 40),
])
def test_the_plan_ends_within_the_budget_and_uses_most_of_it(budget, spent, step_s, extra_s, steps_per_epoch):
    plan = plan_steps(budget - spent, steps_per_epoch, step_s, extra_s)
    end = simulate(plan, spent, step_s, extra_s)
    assert end <= budget
    # and it does not waste the budget: one more step would not have fit inside the margin
    assert end + step_s + extra_s > budget - (budget - spent) * MARGIN - 1e-9
    assert plan.epochs == math.ceil(plan.total_steps / steps_per_epoch)
    assert math.isclose(plan.estimated_seconds, end - spent)


def test_budget_and_epochs_together_are_refused_and_a_long_budget_takes_the_long_recipe():
    with pytest.raises(ConfigError, match="--epochs or --budget"):
        resolve_config({"budget": 180, "epochs": 3})
    assert resolve_config({"budget": 180}).recipe == "fast"
    long = resolve_config({"budget": 600})
    assert long.recipe == "long" and long.model_kwargs == {"width": 24, "pool_first": True}


@pytest.fixture
def fake_pace(monkeypatch):
    """The run 'measures' a pace of 0.4 s per step and 1 s per evaluation and checkpoint."""
    calls = []

    def pace(run, **_):
        calls.append(run.cfg.budget)
        return 0.4, 1.0

    monkeypatch.setattr(budget_module, "measure_pace", pace)
    ticks = iter(range(10**6))
    monkeypatch.setattr(budget_module, "budget_clock", lambda: 2.0 * min(next(ticks), 1))  # set-up takes 2 s
    return calls


def test_a_budgeted_run_plans_its_length_from_the_measured_pace(tmp_path, fake_pace):
    # TINY on the sample: 4,500 training images in batches of 128 -> 35 steps per epoch (drop_last)
    result = fit(**TINY, budget=30, out=str(tmp_path / "run"), progress=False)
    cfg = result.config
    # (30 s - 2 s set-up) * 0.92 = 25.76 s usable; 35 steps * 0.4 s + 1 s = 15 s per epoch: 1 epoch, and
    # 10.76 s left of which the 2nd epoch's evaluation takes 1 s: 24 more steps
    assert fake_pace == [30] and cfg.max_steps == 35 + 24 and cfg.epochs == 2
    assert len(result.history) == cfg.epochs
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert (saved["budget"], saved["max_steps"], saved["epochs"]) == (30, cfg.max_steps, cfg.epochs)


def test_a_resumed_budgeted_run_keeps_its_plan(tmp_path, fake_pace):
    from tests.train.test_fit import stop_after

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(**TINY, budget=30, out=str(out), progress=False, callbacks=[stop_after(1)])
    planned = yaml.safe_load((out / "config.yaml").read_text())["max_steps"]
    fake_pace.clear()
    result = fit(resume=out, progress=False)
    assert fake_pace == []  # nothing re-measured: the plan is the one the run started with
    assert result.config.max_steps == planned and len(result.history) == result.config.epochs


def test_a_too_short_budget_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(budget_module, "measure_pace", lambda run, **_: (20.0, 5.0))
    with pytest.raises(ConfigError, match="budget of 10 s is too short"):
        fit(**TINY, budget=10, out=str(tmp_path / "run"), progress=False)


def test_a_run_that_falls_behind_its_plan_shortens_the_rest_to_end_inside_the_budget():
    """Planned at 0.2 s a step, the machine turns out to take 0.6 s: after the first epoch the rest is re-planned
    at the real pace, and the shortened run (simulated on from there) still ends inside the budget."""
    budget, spe = 180.0, 35
    plan = plan_steps(budget - 2, spe, 0.2, 1.0)
    elapsed = 2 + spe * 0.6 + 1.0  # the first epoch at the real pace
    total = replanned_total(budget, elapsed, spe, plan.total_steps, spe, 0.6, 1.0)
    assert total is not None and spe < total < plan.total_steps
    rest = simulate(plan_steps(budget - elapsed, spe, 0.6, 1.0, margin=REPLAN_MARGIN), elapsed, 0.6, 1.0)
    assert rest <= budget
    # on time, or a little faster: the plan stands
    assert replanned_total(budget, 2 + spe * 0.2 + 1.0, spe, plan.total_steps, spe, 0.2, 1.0) is None
    assert replanned_total(budget, 2 + spe * 0.19 + 1.0, spe, plan.total_steps, spe, 0.19, 1.0) is None


def test_a_run_well_ahead_of_its_plan_lengthens_it_early_or_late_and_still_ends_inside_the_budget():
    """The pace measured before training paid one-time costs (as on a GPU): planned at 0.2 s a step and 2 s per
    evaluation, the first epoch ran at 0.1 s and 1 s. The rest is re-planned longer, to the budget's end. Half-way
    through, at that pace, it is lengthened too (slow epochs passed); at the planned pace the plan stands (the
    rest fits, but not 15% more), as it does with no pace to go by."""
    budget, spe = 180.0, 35
    plan = plan_steps(budget - 2, spe, 0.2, 2.0)
    elapsed = 2 + spe * 0.1 + 1.0
    total = replanned_total(budget, elapsed, spe, plan.total_steps, spe, 0.1, 1.0)
    assert total is not None and total > 1.5 * plan.total_steps
    rest = plan_steps(budget - elapsed, spe, 0.1, 1.0, margin=REPLAN_MARGIN)
    assert total == spe + rest.total_steps and simulate(rest, elapsed, 0.1, 1.0) <= budget
    late = plan.total_steps // 2 // spe * spe  # half-way, at an epoch's end
    on_plan = 2 + late * 0.2 + late // spe * 2.0
    assert replanned_total(budget, on_plan, late, plan.total_steps, spe, 0.2, 2.0) is None
    ahead = 2 + late * 0.1 + late // spe * 1.0
    total = replanned_total(budget, ahead, late, plan.total_steps, spe, 0.1, 1.0)
    assert total is not None and total - late >= 1.15 * (plan.total_steps - late)
    rest = plan_steps(budget - ahead, spe, 0.1, 1.0, margin=REPLAN_MARGIN)
    assert total == late + rest.total_steps and simulate(rest, ahead, 0.1, 1.0) <= budget
    assert replanned_total(budget, elapsed, spe, plan.total_steps, spe, 0.0, 0.0) is None


def test_a_budgeted_run_whose_pace_was_measured_too_slow_trains_longer(tmp_path, monkeypatch, capsys):
    """fit on a fake clock: measured 0.4 s a step, the steps really take 0.1 s. After the first epoch the plan
    is lengthened, the run trains the new length, says so in config.yaml and in one line as it happens (the
    bar's epoch count changes: the line says from what to what, and why), and ends inside the budget."""
    monkeypatch.setattr(budget_module, "measure_pace", lambda run, **_: (0.4, 1.0))
    clock = [0.0]
    monkeypatch.setattr(budget_module, "budget_clock", lambda: clock[0])
    real_train_epoch = fit_module.train_epoch

    def train_epoch(self, epoch):  # each step 0.1 s and each evaluation + checkpoint 0.5 s on the fake clock
        out = real_train_epoch(self, epoch)
        clock[0] += 0.1 * self.last_epoch_steps + 0.5
        self.last_train_s = 0.1 * self.last_epoch_steps
        self.epoch_clock = clock[0] - self.last_train_s - 0.5
        return out

    monkeypatch.setattr(fit_module, "train_epoch", train_epoch)
    result = fit(**TINY, budget=30, out=str(tmp_path / "run"), progress=True)
    cfg = result.config
    planned = plan_steps(30, 35, 0.4, 1.0).total_steps  # TINY: 35 steps per epoch; set-up takes no fake time
    assert cfg.max_steps > 2 * planned and len(result.history) == cfg.epochs
    assert clock[0] <= 30
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("budget re-planned")]
    assert len(said) == 1 and said[0].startswith("budget re-planned after epoch 1: the run is well ahead of its plan")
    assert (f"lengthened from {planned} steps ({math.ceil(planned / 35)} epochs) to {cfg.max_steps} "
            f"({cfg.epochs} epochs)") in said[0] and "100 ms per step" in said[0]
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    note = saved["chosen"]["budget_plan"]
    assert saved["max_steps"] == cfg.max_steps and note.count("lengthened to") == 1  # once: the new plan fits


def test_one_slow_epoch_does_not_cut_a_budgeted_run_short_and_a_slower_machine_still_ends_inside(tmp_path,
                                                                                                monkeypatch):
    """fit on a fake clock whose steps take the measured 0.1 s: one epoch of 1.3x (the machine busy for a moment)
    leaves the plan as it was (the pace kept is over the last three epochs); when every epoch is 1.3x slower,
    the run is shortened and still ends inside the budget, using most of it."""
    monkeypatch.setattr(budget_module, "measure_pace", lambda run, **_: (0.1, 0.5))
    real_train_epoch = fit_module.train_epoch

    def run_with(slow: set[int] | None):
        clock = [0.0]
        monkeypatch.setattr(budget_module, "budget_clock", lambda: clock[0])

        def train_epoch(self, epoch):
            out = real_train_epoch(self, epoch)
            step_s = 0.13 if slow is None or epoch in slow else 0.1
            self.epoch_clock = clock[0]
            self.last_train_s = step_s * self.last_epoch_steps
            clock[0] += self.last_train_s + 0.5
            return out

        monkeypatch.setattr(fit_module, "train_epoch", train_epoch)
        result = fit(**TINY, budget=40, out=str(tmp_path / f"run{len(slow or ())}"), progress=False,
                     overwrite=True)
        return result, clock[0]

    planned = plan_steps(40, 35, 0.1, 0.5).total_steps
    result, end = run_with({3})
    note = yaml.safe_load((result.run_dir / "config.yaml").read_text())["chosen"]["budget_plan"]
    assert result.config.max_steps >= planned and "shortened" not in note
    result, end = run_with(None)
    assert result.config.max_steps < planned and end <= 40
    assert end > 40 * (1 - MARGIN / 2)  # the re-plan keeps a smaller margin than the first plan's (8%: 37.2 s)


@pytest.mark.parametrize("total", [4, 5, 7, 40])
@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_short_schedules_that_a_small_budget_plans_run_to_their_end(total, schedule):
    import torch

    from cnnkit.train.optim import build_scheduler

    cfg = resolve_config({"schedule": schedule, "warmup_epochs": 1.5})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(cfg, opt, total, steps_per_epoch=1)
    lrs = []
    for _ in range(total - 1):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs) and lrs[-1] < max(lrs)


def test_the_fast_recipe_is_a_fallback_only_where_it_trains_something_else():
    """The fast recipe is measured as a fallback only where it differs from the long one in more than its length:
    a model the user names trains with its family's settings under either recipe (measuring it twice cost a
    10-minute DnCNN run 20 s)."""
    from cnnkit.train.config import long_recipe_fallback

    assert long_recipe_fallback({"data": "sample", "budget": 600}) == {"data": "sample", "budget": 600,
                                                                       "recipe": "fast"}
    assert long_recipe_fallback({"data": "photographs", "model": "dncnn", "budget": 600}) is None
    assert long_recipe_fallback({"data": "sample", "budget": 60}) is None  # a short budget takes fast at once


def test_a_long_budget_on_a_machine_too_slow_for_the_long_recipe_trains_the_fast_one(tmp_path, monkeypatch):
    """10 minutes, but this machine (a fake pace of 30 s a step) would fit under 8 epochs of the long recipe's
    wider net: the run takes the fast recipe instead, and says so."""
    monkeypatch.setattr(budget_module, "measure_pace", lambda run, **_: (30.0, 1.0))
    monkeypatch.setattr(budget_module, "budget_clock", lambda: 0.0)
    result = fit(data="sample", budget=600, train_images=1000, out=str(tmp_path / "run"), progress=False)
    assert (result.config.recipe, result.config.model_kwargs) == ("fast", {"width": 16, "pool_first": True})
    # (600 s * 0.92) / (3 steps * 30 s + 1 s) -> 6 epochs of 3 steps
    assert result.config.max_steps == 18 and len(result.history) == 6
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["recipe"] == "fast" and "trains the fast recipe" in saved["chosen"]["budget_plan"]
