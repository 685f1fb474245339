"""Training on several processes with torchrun (gloo on loopback): the same weights as one process on the same
global batch, and a worker killed mid-epoch under `torchrun --max-restarts 1` resumes from the last saved step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnkit.artifacts import read_meta

pytestmark = pytest.mark.slow

# TinyVGG (CNN Explainer's model) has no normalization, so each rank's half batch gives exactly its share of the
# 64-image batch's gradient (BatchNorm under --sync-bn is checked layer by layer below: its backward pass sums
# in another order on two ranks, which at this learning rate moves fp32 weights by about 1e-3 in one step); no
# augmentation (each rank would draw its own), fp32 and NCHW on every process
CONFIG = dict(model="tinyvgg", data="sample", train_images=512, batch_size=64, epochs=2, amp="off",
              channels_last=False, augment={"hflip": False, "crop_padding": 0}, seed=3, threads=1)

SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    import torch
    from cnnkit.train import fit
    fit_module = sys.modules["cnnkit.train.trainer"]
    out, kill_at, stop_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
    config = json.loads(sys.argv[3])
    rank, attempt = int(os.environ["RANK"]), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    steps = [0]
    loop = sys.modules["cnnkit.train.loop"]
    step = loop._step
    def counting_step(run, loss):  # the fault: rank 1 is killed (SIGKILL) at its step `kill_at` of attempt 0
        steps[0] += 1
        if rank == 1 and attempt == 0 and steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        step(run, loss)
    loop._step = counting_step

    if len(sys.argv) > 5 and sys.argv[5] == "syncbn":  # first, BatchNorm synchronized over the two ranks
        import torch.distributed as dist
        from tests.train.test_distributed import sync_bn_results
        store, r, w = next(dist.rendezvous("env://"))
        dist.init_process_group("gloo", store=dist.PrefixStore("test-syncbn", store), rank=r, world_size=w)
        torch.save(sync_bn_results(rank), f"{out}.syncbn.{rank}")
        dist.destroy_process_group()

    restore = fit_module.restore
    def noting_restore(run):
        restore(run)
        print(f"rank {rank} attempt {attempt} resumed at epoch {run.start_epoch} step {run.start_step}", flush=True)
    fit_module.restore = noting_restore

    def keep(end):  # this rank's weights after each epoch, for the test to compare
        torch.save({k: v.clone() for k, v in end.model.state_dict().items()}, f"{out}.rank{rank}.e{end.epoch}.pt")
        if end.epoch == stop_after:
            raise KeyboardInterrupt  # stop here, as a user's callback may
    try:
        fit(out=out, progress=False, callbacks=[keep], **config)
    except KeyboardInterrupt:
        pass
''')


def _torchrun(tmp_path: Path, out: Path, config: dict, kill_at: int = 0, restarts: int = 0, stop_after: int = 0,
              sync_bn: bool = False) -> str:
    import json

    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--max-restarts", str(restarts), "--monitor-interval", "0.2", str(script), str(out), str(kill_at),
         json.dumps(config), str(stop_after), "syncbn" if sync_bn else ""],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same configuration on one process: weights after each epoch."""
    from cnnkit.train import fit

    out = tmp_path_factory.mktemp("single") / "run"
    weights = {}
    fit(out=str(out), progress=False, **CONFIG,
        callbacks=[lambda end: weights.__setitem__(end.epoch, {k: v.clone() for k, v in end.model.state_dict().items()})])
    return weights


def _close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=tol, rtol=0), (k, (a[k] - b[k]).abs().max())
        else:
            assert torch.equal(a[k], b[k]), k


def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path, single):
    out = tmp_path / "run"
    _torchrun(tmp_path, out, CONFIG, stop_after=1, sync_bn=True)  # the first of two epochs: `single`'s schedule
    _check_sync_bn([torch.load(f"{out}.syncbn.{rank}") for rank in (0, 1)])
    ranks = [torch.load(f"{out}.rank{r}.e1.pt") for r in (0, 1)]
    _close(ranks[0], ranks[1], 0.0)  # DistributedDataParallel keeps the ranks identical
    _close(ranks[0], single[1], 1e-5)
    saved = load_file(str(out / "last.safetensors"))
    _close({k: saved[k] for k in ranks[0]}, ranks[0], 0.0)


def test_worker_killed_mid_epoch_restarts_from_the_last_saved_step(tmp_path, single):
    # 510 training images: 7 steps of 64 per epoch; the state is saved every 3 steps: steps 3, 6, then 9 (epoch
    # 2, step 2), 12; rank 1 is killed during step 11, so the restarted workers resume at epoch 2, step 2
    out = tmp_path / "run"
    log = _torchrun(tmp_path, out, {**CONFIG, "checkpoint_every": 3}, kill_at=11, restarts=1)
    assert "rank 0 attempt 1 resumed at epoch 1 step 2" in log and "rank 1 attempt 1 resumed at epoch 1 step 2" in log
    final = [torch.load(f"{out}.rank{r}.e2.pt") for r in (0, 1)]
    _close(final[0], final[1], 0.0)
    _close(final[0], single[2], 1e-5)  # the same steps, in the same order, as one uninterrupted process
    meta = read_meta(out / "last.safetensors")
    assert meta["epoch"] == 2 and "step_in_epoch" not in meta
    # only rank 0 wrote, and only the run's own files: no second run folder, no leftover mid-epoch state
    assert sorted(p.name for p in out.iterdir()) == [
        ".cnnkit-files.json", ".cnnkit.lock", "best.json", "best.safetensors", "config.yaml", "last.json", "last.safetensors",
        "metrics.csv", "state-e0002.safetensors", "tb"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("run.rank")) == ["ddp_script.py", "run"]
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


def sync_bn_results(rank: int) -> dict[str, torch.Tensor]:
    """On rank `rank` of 2 (a gloo process group is up): BatchNorm synchronized over the ranks, on this rank's
    half of a batch, and one BatchNorm2d on the whole batch, in float64 so that only the maths can differ."""
    import torch.distributed as dist
    from torch import nn

    from cnnkit.train.distributed import CpuSyncBatchNorm

    torch.manual_seed(0)
    x = (torch.randn(6, 3, 5, 4, dtype=torch.float64) * 4 + 2)
    w = torch.randn(6, 3, 5, 4, dtype=torch.float64)
    ref = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    sync = CpuSyncBatchNorm(3).double()
    sync.load_state_dict(ref.state_dict())
    full = x.clone().requires_grad_()
    ((ref(full) * w).sum() / 2).backward()  # the mean over the two ranks of each rank's own loss
    mine = x[rank * 3:(rank + 1) * 3].clone().requires_grad_()
    y = sync(mine)
    (y * w[rank * 3:(rank + 1) * 3]).sum().backward()
    grads = torch.cat([sync.weight.grad, sync.bias.grad])
    dist.all_reduce(grads)
    expected = (x[rank * 3:(rank + 1) * 3] - x.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(
        x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + ref.eps) * ref.weight[None, :, None, None] \
        + ref.bias[None, :, None, None]
    return {"y": y.detach(), "ref_y": expected.detach(), "x_grad": mine.grad,
            "ref_x_grad": full.grad[rank * 3:(rank + 1) * 3], "params": grads / 2,
            "ref_params": torch.cat([ref.weight.grad, ref.bias.grad]),
            "running": torch.cat([sync.running_mean, sync.running_var]),
            "ref_running": torch.cat([ref.running_mean, ref.running_var])}


def _check_sync_bn(results: list[dict[str, torch.Tensor]]) -> None:
    """--sync-bn on CPU: forward, gradients and running statistics of BatchNorm over two gloo processes equal
    one BatchNorm2d's on the whole batch."""
    for r in results:
        assert torch.allclose(r["y"], r["ref_y"], atol=1e-12)
        # each rank's input gets the gradient of every rank's loss (the sum: DDP then averages the parameters'
        # gradients over the ranks, as torch's SyncBatchNorm does); the reference loss is that mean
        assert torch.allclose(r["x_grad"], 2 * r["ref_x_grad"], atol=1e-12)
        assert torch.allclose(r["params"], r["ref_params"], atol=1e-12)
        assert torch.allclose(r["running"], r["ref_running"], atol=1e-12)


STUCK = textwrap.dedent('''
    import os, sys, time
    import cnnkit.train.loop as loop
    step = loop._step
    steps = [0]
    def stuck_step(run, loss):  # the fault: rank 1 stops answering (not killed: it hangs) at its third step
        steps[0] += 1
        if int(os.environ["RANK"]) == 1 and steps[0] == 3:
            time.sleep(300)
        step(run, loss)
    loop._step = stuck_step
    from cnnkit.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def test_a_stuck_rank_stops_the_run_with_one_line_after_the_collective_timeout(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(STUCK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CNNKIT_COLLECTIVE_TIMEOUT": "5"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--monitor-interval", "0.2", str(script), "train", "--model", "tinyvgg", "--data", "sample",
         "--train-images", "256", "--batch-size", "32", "--epochs", "1", "--amp", "off", "--threads", "1",
         "--out", str(tmp_path / "run"), "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if "lost each other" in line]
    assert len(said) == 1 and "5 s (CNNKIT_COLLECTIVE_TIMEOUT)" in said[0], proc.stderr[-3000:]
    assert "internal error" not in proc.stderr


def test_a_bad_collective_timeout_is_refused_in_one_line(monkeypatch):
    from cnnkit.errors import ConfigError
    from cnnkit.train.distributed import collective_timeout

    monkeypatch.setenv("CNNKIT_COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="not a number of seconds above 0"):
        collective_timeout()
    monkeypatch.setenv("CNNKIT_COLLECTIVE_TIMEOUT", "90")
    assert collective_timeout().total_seconds() == 90
