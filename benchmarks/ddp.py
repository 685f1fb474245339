"""Data-parallel training on one CPU machine: `cnnkit train` as 1 process × 2 threads against 2 processes × 1
thread (`--nproc 2`: torchrun, gloo, DistributedDataParallel), same model, data, global batch and epochs, with
`--amp off` (fp32) and the default `--amp auto`; then a written projection of data-parallel ResNet-50 on 8 and
64 GPUs from published throughput and interconnect figures (no GPU was measured here).

Measured per run: images/s of the training epoch from metrics.csv (`images_per_s`: the images of all ranks,
summed with an all-reduce, over the epoch's time), the epoch's seconds, and the whole command's wall time
(start-up, data, layout check and launch included). Every process of the run is watched from outside: its
OMP_NUM_THREADS, and the CPU time of each of its threads, so that "1 thread per process" is checked rather than
assumed. Every run is a fresh `cnnkit train` process (or torchrun's); the two settings alternate in order
(swapped every other repeat) over `--repeats` pairs (default 6); the figures are the medians of the per-pair
ratios (2 processes ÷ 1) with distribution-free 95% intervals (`benchmarks.common.paired_ratio`).

    python -m benchmarks.ddp --amp off  # writes benchmarks/results/ddp.json and .md (about 15 minutes on 2 cores)
    python -m benchmarks.ddp --quick    # smoke run on the bundled sample (ddp_quick.json)
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchmarks.common import RESULTS, SHARED_DATA, command_line, machine, paired_ratio, write_result

MODEL, WIDTH, BATCH = "resnet9", 16, 256
TICK = os.sysconf("SC_CLK_TCK")


# -- watching the processes of a run ------------------------------------------------------------------------------
def _stat(pid: int | str, tid: int | str | None = None) -> list[str] | None:
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 on (state, ppid, ...)


def _descendants(root: int) -> list[int]:
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat(d)
            if f:
                parent[int(d)] = int(f[1])
    out, frontier = [], {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier}
        out += sorted(frontier)
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


class Watcher(threading.Thread):
    """Every `every` s: the training processes under `root` (those running `-m cnnkit train`), their
    environment, and the CPU seconds of each of their threads (the last value seen is kept)."""

    def __init__(self, root: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.every, self.stop = root, every, threading.Event()
        self.procs: dict[int, dict] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            for pid in [self.root] + _descendants(self.root):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"cnnkit" not in cmd or b"train" not in cmd:
                    continue
                p = self.procs.setdefault(pid, {"first": now, "threads": {}, "env": None})
                if p["env"] is None:
                    env = _environ(pid)
                    p["env"] = {k: env.get(k) for k in ("OMP_NUM_THREADS", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
                p["last"] = now
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tids:
                    f = _stat(pid, tid)
                    if f:
                        p["threads"][tid] = max(p["threads"].get(tid, 0.0), (int(f[11]) + int(f[12])) / TICK)
            self.stop.wait(self.every)

    def summary(self) -> list[dict]:
        out = []
        for pid, p in self.procs.items():
            cpu = sum(p["threads"].values())
            if cpu < 1.0:  # the launcher and other idle processes
                continue
            busy = sorted((v for v in p["threads"].values()), reverse=True)
            role = (f"rank {p['env']['RANK']}" if p["env"].get("RANK") is not None
                    else "launcher" if any(q["env"].get("RANK") is not None for q in self.procs.values())
                    else "single process")
            out.append({"pid": pid, "role": role, **p["env"], "cpu_seconds": cpu, "lifetime_s": p["last"] - p["first"],
                        "mean_cores_busy": cpu / max(p["last"] - p["first"], 1e-9), "threads_seen": len(busy),
                        "threads_over_10pct_of_cpu": sum(v >= 0.1 * cpu for v in busy),
                        "top_thread_cpu_seconds": [round(v, 1) for v in busy[:4]]})
        return sorted(out, key=lambda r: r["role"])


def _busy_seconds() -> float:
    """CPU seconds all processes of this machine have used: /proc/stat's busy columns."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / TICK


# -- one run ------------------------------------------------------------------------------------------------------
def train(setting: str, amp: str, args, work: Path) -> dict:
    out = work / f"{setting}-{amp}"
    cmd = [sys.executable, "-m", "cnnkit", "train", "--data", args.data, "--data-dir", args.data_dir,
           "--model", MODEL, "--model-kw", f"width={WIDTH}", "--epochs", "1", "--batch-size", str(BATCH),
           "--amp", amp, "--val-fraction", "0", "--out", str(out), "--overwrite", "--quiet"]
    if args.train_images:
        cmd += ["--train-images", str(args.train_images)]
    cmd += ["--threads", "2"] if setting == "1x2" else ["--nproc", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    busy, own = _busy_seconds(), sum(os.times()[:2])
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = Watcher(proc.pid)
    watcher.start()
    log, _ = proc.communicate()
    wall = time.perf_counter() - t
    watcher.stop.set()
    watcher.join()
    run_cpu = sum(sum(p["threads"].values()) for p in watcher.procs.values())
    other = (_busy_seconds() - busy) - run_cpu - (sum(os.times()[:2]) - own)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log[-3000:]}")
    with open(out / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    chosen = yaml.safe_load((out / "config.yaml").read_text())["chosen"]
    result = {"setting": setting, "amp": amp, "images_per_s": float(row["images_per_s"]),
              "epoch_seconds": float(row["epoch_seconds"]), "wall_seconds": wall,
              "train_acc": float(row["train_acc"]), "precision": chosen["precision"], "layout": chosen["layout"],
              "rank0_torch_threads": chosen["threads"], "other_processes_cpu_s": max(other, 0.0),
              "processes": watcher.summary()}
    print({k: v for k, v in result.items() if k != "processes"}, flush=True)
    for p in result["processes"]:
        print("   ", p, flush=True)
    return result


# -- the projection -----------------------------------------------------------------------------------------------
DLE = ("NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README, 'Training performance: NVIDIA DGX A100 "
       "(8x A100 80GB)', pytorch-21.03 NGC container, batch 256 per GPU (configs.yml, DGXA100): "
       "https://github.com/NVIDIA/DeepLearningExamples/tree/master/PyTorch/Classification/ConvNets/resnet50v1.5")
MLPERF = ("NVIDIA, 'Deep Learning Performance: Training' page, MLPerf Training v3.0 closed division, ResNet-50 v1.5 "
          "(MXNet) on 8× H100-SXM5-80GB (MLPerf ID 3.0-2053): 13.466 minutes to 75.90% top-1: "
          "https://developer.nvidia.com/deep-learning-performance-training-inference/training")
NCCL_A100 = ("NVIDIA/nccl-tests issue #149 ('Expected bandwidth results? A100 GPUs over NVLink'): all_reduce_perf "
             "busbw about 200 GB/s on 8× A100-SXM4-80GB over NVLink (line rate 300 GB/s per direction): "
             "https://github.com/NVIDIA/nccl-tests/issues/149")
NCCL_H100 = ("NVIDIA/nccl-tests issue #212, answer by NCCL's maintainer: NVLink4 line rate 450 GB/s per direction; "
             "with protocol overhead NCCL reaches about 370 GB/s busbw with the ring algorithm (about 480 GB/s "
             "with NVLink SHARP): https://github.com/NVIDIA/nccl-tests/issues/212")
NCCL_IB = ("NVIDIA/nccl-tests issue #119: 3 nodes of 8× A100 with 4× 200 Gb/s HDR InfiniBand each (100 GB/s per "
           "node): all-reduce busbw 84.8 GB/s on average, 96 GB/s at peak, i.e. about 85% of the nodes' NIC line rate: "
           "https://github.com/NVIDIA/nccl-tests/issues/119")


MEASURED_8GPU = ("8 GPUs give 7.72× the 1-GPU throughput in TF32 (96.5% scaling efficiency) and 6.72× with AMP "
                 "(84%)")


def projection() -> dict:
    params = 25_557_032  # torchvision resnet50
    grad_bytes = params * 4  # fp32 gradients (DDP all-reduces param.grad, fp32 under autocast as well)
    bucket = 25 * 2**20  # DDP's default bucket_cap_mb
    buckets = math.ceil(grad_bytes / bucket)
    alpha = 2e-6  # assumption: seconds of latency per ring step
    ib_eff = 84.8 / 100  # from NCCL_IB
    gpus = {
        "A100 (DLE PyTorch, AMP)": {"images_per_s": 2470, "source": "published (DLE, 1× A100 80GB, mixed precision)"},
        "A100 (DLE PyTorch, TF32)": {"images_per_s": 938, "source": "published (DLE, 1× A100 80GB, TF32)"},
        "H100 (MLPerf-optimized, mixed)": {
            "images_per_s": round(35 * 1_281_167 / (13.466 * 60) / 8),
            "source": "derived from MLPerf v3.0 3.0-2053 (8× H100, 13.466 min) assuming about 35 epochs to the "
                      "target (an assumption: MLPerf ResNet-50 runs converge in about 35–40 epochs; time to train "
                      "also "
                      "includes evaluation, so this understates raw throughput slightly)"}}
    nets = {
        "8 GPUs, 1 node, NVLink/NVSwitch": {"gpus": 8, "busbw_GBps": {"A100": 200, "H100": 370},
                                            "note": "busbw: A100 measured in nccl-tests#149; H100 NCCL ring figure "
                                                    "from nccl-tests#212"},
        "64 GPUs, 8 nodes × 8×200 Gb/s InfiniBand": {"gpus": 64, "busbw_GBps": {"A100": 200 * ib_eff,
                                                                                 "H100": 200 * ib_eff},
                                                     "note": "8×200 Gb/s = 200 GB/s per node; ring busbw across "
                                                             "nodes is bounded by a node's NIC line rate, at the "
                                                             "85% efficiency measured in nccl-tests#119"},
        "64 GPUs, 8 nodes × 400 Gb/s per node": {"gpus": 64, "busbw_GBps": {"A100": 50 * ib_eff, "H100": 50 * ib_eff},
                                                 "note": "one 400 Gb/s link per node = 50 GB/s, at 85% efficiency"},
    }
    rows = []
    for gname, g in gpus.items():
        t_step = 256 / g["images_per_s"]
        t_bwd = t_step * 2 / 3  # assumption: backward ≈ 2× forward
        for nname, n in nets.items():
            N = n["gpus"]
            bw = n["busbw_GBps"]["A100" if gname.startswith("A100") else "H100"] * 1e9
            sent = 2 * (N - 1) / N * grad_bytes
            t_bw = sent / bw
            t_lat = buckets * 2 * (N - 1) * alpha
            t_comm = t_bw + t_lat
            exposed = max(t_comm - t_bwd, 0.0) + t_comm / buckets  # the last bucket waits for the end of backward
            rows.append({"gpu": gname, "network": nname, "gpus": N, "compute_ms_per_step": t_step * 1e3,
                         "backward_ms": t_bwd * 1e3, "bytes_sent_per_gpu_MB": sent / 1e6, "busbw_GBps": bw / 1e9,
                         "comm_bandwidth_ms": t_bw * 1e3, "comm_latency_ms": t_lat * 1e3,
                         "comm_ms": t_comm * 1e3, "exposed_comm_with_overlap_ms": min(exposed, t_comm) * 1e3,
                         "efficiency_no_overlap": t_step / (t_step + t_comm),
                         "efficiency_with_overlap": t_step / (t_step + min(exposed, t_comm))})
    return {
        "model": "ResNet-50 (torchvision resnet50, 25,557,032 parameters), batch 256 per GPU",
        "gradient_bytes": grad_bytes, "ddp_buckets": buckets, "bucket_bytes": bucket,
        "formulas": {"bytes_sent_per_gpu": "2(N−1)/N × gradient bytes (ring all-reduce)",
                     "comm_time": "bytes_sent_per_gpu / busbw + buckets × 2(N−1) × α",
                     "efficiency_no_overlap": "t_compute / (t_compute + t_comm)",
                     "efficiency_with_overlap": "t_compute / (t_compute + max(t_comm − t_backward, 0) + "
                                                "t_comm / buckets)"},
        "assumptions": [
            "busbw (NCCL's bus bandwidth) is what the ring formula divides by; the inter-node figure is bounded by a "
            "node's total NIC line rate (each of NCCL's rings crosses a node boundary once per node, one NIC per ring)",
            f"α = {alpha * 1e6:.0f} µs of latency per ring step (an assumption; NCCL's tree algorithm would make the "
            "64-GPU latency term smaller)",
            "backward takes 2/3 of a step's compute; with overlap, DDP all-reduces each 25 MB bucket as soon as its "
            "gradients are ready, so only communication longer than the backward pass plus the last bucket (whose "
            "gradients are ready only at the end of backward) is exposed",
            "the optimizer step, the input pipeline and stragglers are left out: the projection is of the "
            "gradient exchange alone",
            "the H100 compute time is derived from a time-to-train result with an assumed epoch count (see the row)"],
        "gpus": gpus, "networks": nets, "rows": rows,
        "sources": [DLE, MLPERF, NCCL_A100, NCCL_H100, NCCL_IB],
        "label": "gradient-exchange efficiency (model)",
        "measured_8gpu_scaling": {"source": "NVIDIA Deep Learning Examples, ResNet-50 PyTorch, DGX A100 (8× A100 80GB)",
                                  "tf32": {"speedup": 7.72, "efficiency": 0.965}, "amp": {"speedup": 6.72, "efficiency": 0.84}},
        "published_scaling_check": "DLE's own DGX A100 table: 8 GPUs give 7.72× (TF32, 96.5%) and 6.72× "
                                   "(AMP, 84%) the 1-GPU throughput; the gradient exchange alone would cost about "
                                   "1% at 8 GPUs, so most of the AMP run's loss is elsewhere (input pipeline, "
                                   "optimizer, synchronization), which this projection does not model.",
    }


# -- report -------------------------------------------------------------------------------------------------------
def lscpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return {}
    keep = ("Architecture", "Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
            "L2 cache", "L3 cache", "Hypervisor vendor", "NUMA node(s)")
    rows = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: rows[k].strip() for k in keep if k in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--train-images", type=int, default=None, help="a stratified subset (default: all 60,000)")
    ap.add_argument("--repeats", type=int, default=6, help="pairs of runs (one per setting), order alternated")
    ap.add_argument("--amp", nargs="+", default=["off", "auto"])
    ap.add_argument("--quick", action="store_true", help="smoke run: the bundled sample, 1,024 images, 1 repeat")
    args = ap.parse_args()
    args.data = "sample" if args.quick else "fashion-mnist"
    if args.quick:
        args.train_images, args.repeats = args.train_images or 1024, 1
    work = Path(tempfile.mkdtemp(prefix="cnnkit-bench-ddp-"))
    runs: list[dict] = []
    for r in range(args.repeats):
        for amp in args.amp:
            for setting in (("1x2", "2x1") if r % 2 == 0 else ("2x1", "1x2")):
                runs.append(train(setting, amp, args, work) | {"repeat": r})
    summary = {}
    for amp in args.amp:
        s = {}
        for setting in ("1x2", "2x1"):
            mine = [x for x in runs if x["amp"] == amp and x["setting"] == setting]
            s[setting] = {"images_per_s_median": statistics.median(x["images_per_s"] for x in mine),
                          "epoch_seconds_median": statistics.median(x["epoch_seconds"] for x in mine),
                          "wall_seconds_median": statistics.median(x["wall_seconds"] for x in mine),
                          "precision": mine[0]["precision"], "layout": mine[0]["layout"]}
        s["ratio_2x1_over_1x2_images_per_s"] = s["2x1"]["images_per_s_median"] / s["1x2"]["images_per_s_median"]
        s["ratio_2x1_over_1x2_wall"] = s["2x1"]["wall_seconds_median"] / s["1x2"]["wall_seconds_median"]
        pairs = [tuple(next(x for x in runs if x["amp"] == amp and x["setting"] == st and x["repeat"] == r)
                       for st in ("2x1", "1x2")) for r in range(args.repeats)]
        s["paired_images_per_s_2x1_over_1x2"] = paired_ratio([a["images_per_s"] / b["images_per_s"] for a, b in pairs])
        s["paired_wall_2x1_over_1x2"] = paired_ratio([a["wall_seconds"] / b["wall_seconds"] for a, b in pairs])
        summary[amp] = s
    ranks = [p for x in runs if x["setting"] == "2x1" for p in x["processes"] if p["role"].startswith("rank")]
    checks = {
        "every rank of the 2-process runs had OMP_NUM_THREADS=1": all(p.get("OMP_NUM_THREADS") == "1" for p in ranks),
        "every rank of the 2-process runs had one busy thread (≥ 10% of its CPU time)":
            all(p["threads_over_10pct_of_cpu"] == 1 for p in ranks),
        "rank 0 of the 2-process runs reported torch.get_num_threads() == 1":
            all(x["rank0_torch_threads"] == 1 for x in runs if x["setting"] == "2x1"),
        "the 2-process runs had 2 training processes (ranks 0 and 1)": all(
            sorted(q["role"] for q in x["processes"] if q["role"].startswith("rank")) == ["rank 0", "rank 1"]
            for x in runs if x["setting"] == "2x1"),
        "the 1-process runs had two busy threads (the check can see a second thread)": all(
            q["threads_over_10pct_of_cpu"] == 2 for x in runs if x["setting"] == "1x2" for q in x["processes"]),
    }
    import hashlib

    import cnnkit.train

    base = Path(cnnkit.train.__file__).parent
    sources = {f"src/cnnkit/train/{n}": hashlib.sha1(b"blob %d\0" % len((base / n).read_bytes())
                                                      + (base / n).read_bytes()).hexdigest()
               for n in ("fit.py", "distributed.py")}
    payload = {"machine": machine(), "sources_measured": sources, "lscpu": lscpu(), "data": args.data,
               "train_images": args.train_images,
               "model": f"{MODEL} width {WIDTH}", "global_batch": BATCH, "epochs": 1, "val_fraction": 0,
               "settings": {"1x2": "1 process, --threads 2", "2x1": "--nproc 2 (torchrun, gloo, DDP), "
                                                                   "OMP_NUM_THREADS left to cnnkit's launcher"},
               "images_per_s_counts_all_ranks": "yes: fit.py's train_epoch sums (loss, correct, images) on each rank "
                                                "and all-reduces them (all_sum) before dividing the images of all "
                                                "ranks by the epoch's time",
               "summary": summary, "runs": runs, "checks": checks, "gpu_measured": False,
               "projection": projection(), "quick": args.quick,
               "command": command_line("benchmarks.ddp")}
    name = "ddp_quick" if args.quick else "ddp"
    shutil.rmtree(work, ignore_errors=True)
    print(write_result(name, payload))
    print(report(payload, name))


def report(p: dict, name: str) -> str:
    m, cpu = p["machine"], p["lscpu"]
    data = "full Fashion-MNIST training set (60,000 images)" if not p["train_images"] else \
        f"{p['data']}, {p['train_images']} training images"
    lines = [
        "# Data-parallel training on one CPU machine, and a projection to GPUs", "",
        f"Machine: {cpu.get('Model name', m['cpu'])}, {cpu.get('CPU(s)', m['cores'])} CPUs "
        f"({cpu.get('Core(s) per socket', '?')} cores per socket × {cpu.get('Socket(s)', '?')} socket, "
        f"{cpu.get('Thread(s) per core', '?')} thread per core), L2 {cpu.get('L2 cache', '?')}, "
        f"L3 {cpu.get('L3 cache', '?')}, hypervisor {cpu.get('Hypervisor vendor', 'none')}; ISA "
        f"{', '.join(m['isa'])}; torch {m['torch']}, cnnkit {m['cnnkit']}, Python {m['python']}. **No GPU: "
        f"no GPU figure below was measured.** Command: `{p['command']}`.", "",
        "## Measured: 1 process × 2 threads against 2 processes × 1 thread", "",
        f"`cnnkit train --data {p['data']} --model resnet9 --model-kw width=16 --epochs 1 --batch-size 256 "
        f"--val-fraction 0` on the {data}; global batch 256 in both (128 per process with `--nproc 2`). "
        f"images/s: metrics.csv's `images_per_s` (all ranks' images: the per-rank sums are all-reduced in "
        f"`train_epoch`); wall: the whole command, start-up and launch included. Median of "
        f"{max(r['repeat'] for r in p['runs']) + 1} runs each, each a fresh process, alternating order.", "",
        "| --amp | setting | precision | images/s | epoch (s) | wall (s) | runs (images/s) | train acc |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for amp, s in p["summary"].items():
        for setting, label in (("1x2", "1 process × 2 threads"), ("2x1", "2 processes × 1 thread")):
            r = s[setting]
            mine = [x for x in p["runs"] if x["amp"] == amp and x["setting"] == setting]
            lines.append(f"| {amp} | {label} | {r['precision'].split(' (')[0]} | {r['images_per_s_median']:.0f} | "
                         f"{r['epoch_seconds_median']:.1f} | {r['wall_seconds_median']:.1f} | "
                         f"{', '.join(format(x['images_per_s'], '.0f') for x in mine)} | {mine[0]['train_acc']:.4f} |")
    other = max(x["other_processes_cpu_s"] for x in p["runs"])
    spread = max(max(x["images_per_s"] for x in p["runs"] if x["amp"] == a and x["setting"] == st)
                 / min(x["images_per_s"] for x in p["runs"] if x["amp"] == a and x["setting"] == st)
                 for a in p["summary"] for st in ("1x2", "2x1"))
    lines += ["", f"Other processes on the machine used {other:.1f} CPU s at most during a run (from /proc/stat, less "
              f"the run's own processes and this script). Repeats of one setting differ by up to "
              f"{100 * (spread - 1):.0f}% on this virtual machine (its host is shared and its speed drifts over the "
              f"day with nothing else running inside it), so a ratio within about that margin of 1.0 means 'about "
              f"the same'.", ""]
    for amp, s in p["summary"].items():
        ips, wall = s["paired_images_per_s_2x1_over_1x2"], s["paired_wall_2x1_over_1x2"]
        lo, hi = ips["interval"]
        verdict = ("no measurable difference" if lo <= 1 <= hi else
                   "2 processes faster" if lo > 1 else "2 processes slower")
        lines.append(f"- `--amp {amp}`: 2 processes ÷ 1 process, images/s: **{ips['median']:.2f}× ({lo:.2f}–{hi:.2f}, "
                     f"{ips['pairs']} pairs): {verdict}** (per pair: {', '.join(f'{v:.2f}' for v in ips['ratios'])}); "
                     f"wall time {wall['median']:.2f}× ({wall['interval'][0]:.2f}–{wall['interval'][1]:.2f}): "
                     f"torchrun's launch, a second process's start-up and the gloo rendezvous.")
    lines += ["", "Checks (each process watched from outside: /proc/PID/environ and the CPU time of each thread):", "",
              "| check | met |", "| --- | --- |"]
    lines += [f"| {k} | {'yes' if v else 'no'} |" for k, v in p["checks"].items()]
    lines += ["", "| run | process | OMP_NUM_THREADS | CPU s | mean cores busy | threads ≥ 10% of its CPU |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for x in p["runs"]:
        for q in x["processes"]:
            lines.append(f"| {x['setting']} amp {x['amp']} #{x['repeat'] + 1} | {q['role']} | "
                         f"{q['OMP_NUM_THREADS'] or 'unset'} | {q['cpu_seconds']:.0f} | {q['mean_cores_busy']:.2f} | "
                         f"{q['threads_over_10pct_of_cpu']} |")
    pr = p["projection"]
    lines += ["", "## Gradient-exchange efficiency (model): ResNet-50, data-parallel, 8 and 64 GPUs (not measured)", "",
              "A model of the all-reduce alone, not a forecast of training speed. Measured beside it, on 8× A100 "
              "in one DGX node (NVIDIA Deep Learning Examples' own table): " + MEASURED_8GPU + ".", "",
              f"{pr['model']}: fp32 gradients {pr['gradient_bytes'] / 1e6:.1f} MB per step, all-reduced in "
              f"{pr['ddp_buckets']} DDP buckets of 25 MB. A ring all-reduce sends 2(N−1)/N × that per GPU: "
              f"{2 * 7 / 8 * pr['gradient_bytes'] / 1e6:.1f} MB at N = 8, "
              f"{2 * 63 / 64 * pr['gradient_bytes'] / 1e6:.1f} "
              f"MB at N = 64. Formulas: {'; '.join(f'{k} = {v}' for k, v in pr['formulas'].items())}.", "",
              "| GPU (compute per step of 256) | network | busbw (GB/s) | compute (ms) | comm (ms) | exposed with "
              "overlap (ms) | gradient-exchange efficiency (model), no overlap | gradient-exchange efficiency (model), overlap |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in pr["rows"]:
        lines.append(f"| {r['gpu']} | {r['network']} | {r['busbw_GBps']:.0f} | {r['compute_ms_per_step']:.1f} | "
                     f"{r['comm_ms']:.2f} | {r['exposed_comm_with_overlap_ms']:.2f} | "
                     f"{100 * r['efficiency_no_overlap']:.1f}% | {100 * r['efficiency_with_overlap']:.1f}% |")
    lines += ["", "Per-GPU compute (images/s at batch 256): " + "; ".join(
        f"{k}: {v['images_per_s']} ({v['source']})" for k, v in pr["gpus"].items()) + ".", "",
        "Assumptions (not measured, not published figures):", ""] + [f"- {a}" for a in pr["assumptions"]]
    lines += ["", f"Cross-check: {pr['published_scaling_check']}", "", "Sources:", ""]
    lines += [f"- {s}" for s in pr["sources"]] + [""]
    text = "\n".join(lines)
    (RESULTS / f"{name}.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
