"""Training on several processes or machines with torch.distributed: the process group torchrun sets up
(gloo on CPU, NCCL on CUDA), sums across ranks, BatchNorm synchronized across ranks (on CPU too), and
`cnnkit train --nproc N`, which starts torchrun's launcher on this machine.

cnnkit adds no engine of its own: ranks are torchrun's, gradients are averaged by DistributedDataParallel.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cnnkit.errors import ConfigError

# How long a rank waits in a collective for the others before the run stops with the backend's error (torch's
# own defaults: 30 minutes for gloo, 10 for NCCL). The longest wait of a healthy run is the others' while rank 0
# writes a checkpoint; a rank that stopped answering (stuck) ends the run instead of hanging it.
COLLECTIVE_TIMEOUT_S = 600.0
TIMEOUT_VARIABLE = "CNNKIT_COLLECTIVE_TIMEOUT"


def collective_timeout() -> timedelta:
    """How long a collective waits: $CNNKIT_COLLECTIVE_TIMEOUT seconds where set, else 10 minutes."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 10**7:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds above 0 (the default is "
                          f"{COLLECTIVE_TIMEOUT_S:g})")
    return timedelta(seconds=seconds)


@dataclass
class Ranks:
    """This process's place in the run: rank, world size and local rank (0, 1, 0 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files and prints its progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def elastic_restart() -> int:
    """How many times torchrun has restarted this run's workers (0 on the first attempt or without torchrun)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def init_ranks(device: torch.device) -> Ranks:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA); a single
    process when not launched by torchrun (or launched with one process)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return Ranks()
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # torchrun's store outlives a restart of the workers, and the addresses the killed workers published
        # there would be read again (gloo then connects to a dead port: pytorch/pytorch#167288); each attempt
        # gets keys of its own
        store, rank, world = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"cnnkit/attempt-{elastic_restart()}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=collective_timeout(),
                                device_id=device if device.type == "cuda" else None)
    return ranks


def all_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """`values` summed over every rank (a copy; the input is unchanged); itself on one process."""
    if not ranks.distributed:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def average_gradients(params: list[nn.Parameter], ranks: Ranks) -> None:
    """Average the gradients of parameters that DistributedDataParallel does not own (MEAL V2's
    discriminator trains beside the model) over the ranks."""
    if not ranks.distributed:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(ranks.world)


def leave(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward pass sums the gradients over the ranks too: each rank's input reaches
    every rank's output, so every rank's loss sends gradient back to it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across all ranks.

    torch's SyncBatchNorm runs on CUDA only; on CPU (gloo) this all-reduces each channel's count and sum,
    then the sum of squared deviations from the global mean (two passes, as exact as one process's
    BatchNorm), through a differentiable all-reduce, so that the gradients also flow through the other
    ranks' statistics exactly as SyncBatchNorm's do. Evaluation uses the running statistics, as BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        c = x.shape[1]
        n = torch.full((1,), float(x.shape[0] * x.shape[2] * x.shape[3]), device=x.device)
        first = _SumOverRanks.apply(torch.cat([xf.sum(dim=(0, 2, 3)), n]))
        count = first[c]
        mean = first[:c] / count
        centred = xf - mean[None, :, None, None]
        var = _SumOverRanks.apply(centred.square().sum(dim=(0, 2, 3))) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1), alpha=m)
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d (and on CUDA every BatchNorm) of `model` synchronized across the ranks."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        if type(module) is nn.BatchNorm2d:
            new = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new
        for name, child in module.named_children():
            setattr(module, name, convert(child))
        return module

    return convert(model)


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Run `cnnkit ARGV` on `nproc` processes of this machine with torchrun's launcher (what `torchrun
    --standalone --nproc-per-node N -m cnnkit ARGV` does); the exit status of the run (a failed worker's)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ConfigError(f"--nproc must be 1 or more, got {nproc}")
    import torch.distributed.elastic.multiprocessing.api  # noqa: F401  (its loggers exist from here on)

    for name in list(logging.root.manager.loggerDict):  # its notes and failure reports: the worker's own line,
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):  # printed by it, says why
            logging.getLogger(name).setLevel(logging.CRITICAL)
    threads_given = "OMP_NUM_THREADS" in os.environ
    if not threads_given:  # share this machine's cores among the processes (torchrun: 1); the workers inherit it
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:
            cpus = os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, cpus // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts,
                          monitor_interval=0.1, start_method="spawn")
    try:
        elastic_launch(config, sys.executable)("-m", "cnnkit", *argv)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        return next((c for c in codes if c and c > 0), 1)  # a worker's own status (2 for bad input)
    finally:
        if not threads_given:  # this process (a notebook, a test) keeps its own setting
            del os.environ["OMP_NUM_THREADS"]
    return 0
