"""A run's directory and configuration: which configuration a run trains (new, or the saved one it resumes),
where it writes, and the files it keeps there besides checkpoints (config.yaml, metrics.csv, TensorBoard)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from cnnkit.artifacts import OutputDir, RunLock, atomic_write_text, claim_dir, read_meta
from cnnkit.artifacts.files import TENSORBOARD_EVENTS, check_out_dir
from cnnkit.errors import CheckpointError, ConfigError
from cnnkit.train.config import TrainConfig, absolute_paths, resolve_new_run
from cnnkit.train.run import Run

# What `resume` may change: the length of the run, where it runs, and where the data now lives.
RESUME_MAY_CHANGE = {"epochs", "device", "threads", "early_stopping", "data_dir", "data", "data_mode", "workers",
                     "checkpoint_every"}
# the names a run writes in its folder (TensorBoard's event files aside, in tb/)
RUN_FILE = re.compile(r"config\.yaml|metrics\.csv|(best|last|epoch-\d{4,})\.(safetensors|json)"
                      r"|state-e\d{4,}(-s\d{7,})?\.safetensors")


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a run (finished, stopped, or stopped before its first epoch ended)."""
    return (folder / "last.safetensors").exists() or (folder / "config.yaml").exists()


def resolve_run(config: TrainConfig | dict[str, Any] | None, resume: str | Path | None,
                options: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The configuration a run trains, and the fast recipe's options to fall back to if a budget's long recipe
    fits too few epochs here (None if there is no such choice): a new configuration from the options, or the
    saved one of the run to resume (with what resuming may change)."""
    if resume is not None:
        return _resumed(Path(resume).expanduser(), absolute_paths(options)), None
    return resolve_new_run(config, options)


def _saved_config(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} is not a run directory")
    last, config_file = run_dir / "last.safetensors", run_dir / "config.yaml"
    if last.exists():
        return read_meta(last)["config"]
    if not config_file.exists():
        raise CheckpointError(f"cannot resume: {last} does not exist (nor {config_file.name})")
    try:  # stopped before its first epoch ended: start it again from its config
        saved = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError:
        saved = None
    if not isinstance(saved, dict):
        raise CheckpointError(f"cannot resume: {config_file} is damaged; start a new run")
    saved.pop("chosen", None)  # what auto settled on last time: decided afresh
    return saved


MOVABLE = ("imagefolder", "masks", "voc", "coco")  # sources named by a path: a resumed run may re-point it


def _resumed(run_dir: Path, options: dict[str, Any]) -> TrainConfig:
    saved = _saved_config(run_dir)
    changed = sorted(k for k, v in options.items() if v is not None and k not in RESUME_MAY_CHANGE
                     and k != "out" and saved.get(k) != v)
    if changed:
        raise ConfigError(f"resuming continues the saved configuration; cannot change: {', '.join(changed)}")
    kind = saved["data"].partition(":")[0]
    if "data" in options and options["data"] and options["data"] != saved["data"] and not (
            kind in MOVABLE and options["data"].partition(":")[0] == kind):
        raise ConfigError(f"resuming continues the saved configuration; cannot change data from "
                          f"{saved['data']} to {options['data']} (only a folder's or file's path may move: "
                          f"{', '.join(k + ':' for k in MOVABLE)})")
    given = {k: v for k, v in options.items() if v is not None and k in RESUME_MAY_CHANGE}
    if "epochs" in given and saved.get("max_steps"):  # a new length replaces a budget's plan
        given["max_steps"] = None
    folder = given.get("data", saved["data"])
    where = folder.partition(":")[2]
    if kind in MOVABLE and not all(Path(p).exists() for p in where.split(",")):  # coco's pair: two files
        raise ConfigError(f"the run's data {where} is gone; if it moved, re-point it: "
                          f"--resume {run_dir} --data {kind}:NEW_PATH")
    if "data_dir" not in given and saved.get("data_dir") and not Path(saved["data_dir"]).exists():
        given["data_dir"] = None  # the saved folder is gone: fall back to $CNNKIT_DATA or the cache
    return TrainConfig.from_dict({**saved, **given, "out": str(run_dir.absolute())})  # the run may have moved


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<model>-<data>, or -2, -3, ... so that a default name never lands on an existing run."""
    name = f"{cfg.model.replace('/', '-')}-{cfg.data.split(':')[0]}"
    base = run = Path("runs") / name
    i = 2
    while holds_run(run):
        run, i = base.with_name(f"{base.name}-{i}"), i + 1
    return run


def check_run_dir(run: Path, resume: bool, overwrite: bool) -> None:
    """Every refusal of open_run_dir, made without writing anything: a refused run leaves the folder as it was."""
    if (run.exists() or run.is_symlink()) and not run.is_dir():
        raise ConfigError(f"--out {run} is a file; give a folder for the run")
    replace = holds_run(run) and not resume
    if replace and not overwrite:
        raise ConfigError(f"{run} already holds a run; continue it (--resume {run}), replace it "
                          f"(--overwrite) or choose another output folder")
    check_out_dir(run, overwrite=replace)  # replaced: nothing but cnnkit's files there, and not a protected folder
    if run.is_dir() and not replace:  # a new run beside other files, or a resumed one: none it writes is theirs
        out = OutputDir.of(run)
        out.check_free(sorted(p for p in run.iterdir() if RUN_FILE.fullmatch(p.name)))
        out.check_library_files(run / "tb", TENSORBOARD_EVENTS)


def open_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> tuple[Path, OutputDir, RunLock]:
    """Claim and lock the run directory; with `overwrite`, remove the previous run's files (only cnnkit's)."""
    run = Path(cfg.out).expanduser() if cfg.out else default_run_dir(cfg)
    check_run_dir(run, resume, overwrite)
    out = claim_dir(run)
    lock = RunLock(run).acquire()
    try:
        check_run_dir(run, resume, overwrite)  # again, now that no other run can change the folder
        if holds_run(run) and not resume:
            out = claim_dir(run, overwrite=True)
    except BaseException:
        lock.release(remove=lock.created)
        raise
    return run, out, lock


def metrics_csv(history: list[dict[str, float]], fields: list[str]) -> str:
    """The run's metrics.csv: a header and one row per finished epoch."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def write_config(run: Run) -> None:
    """config.yaml: the resolved configuration, and under `chosen` what `auto` settled on here and why."""
    chosen = {"device": str(run.device), "precision": run.precision, "layout": run.layout_note,
              "threads": torch.get_num_threads(), "data": run.data_note, "processes": run.ranks.world,
              "memory": ("freed memory kept for the next steps (glibc malloc limits raised while training)"
                         if run.reuses_memory else "the C library's default malloc")}
    if run.plan_note:
        chosen["budget_plan"] = run.plan_note
    atomic_write_text(run.dir / "config.yaml", yaml.safe_dump({**run.cfg.to_dict(), "chosen": chosen}, sort_keys=False))


def open_tensorboard(run: Run) -> None:
    """TensorBoard's writer in <run>/tb (its event files recorded as written by a library cnnkit called)."""
    from torch.utils.tensorboard import SummaryWriter

    run.out.record_library_files(run.dir / "tb", TENSORBOARD_EVENTS)
    run.tb = SummaryWriter(str(run.dir / "tb"), purge_step=run.start_epoch + 1 if run.start_epoch else None)
