"""Why cnnkit's ONNX Runtime sessions run with intra-op spinning off: with ORT's default (spinning on),
its idle threads keep the cores busy after each run, and a PyTorch call made right after pays for it.

Two arms, spinning on (ORT's default) and off (cnnkit's sessions), each in a fresh process, alternated over
`--pairs` pairs (default 6; the order swapped every other pair). Each process builds the same resnet9 (width 16,
untrained weights: speed does not depend on them) at batch 64 on 28×28 inputs, 2 torch threads and as many
ORT threads, warms up, then runs 7 rounds of: PyTorch eager throughput alone, ORT throughput, PyTorch eager
again right after ORT; it reports each quantity's median over its rounds. The figures are medians of the
per-pair ratios (off ÷ on) with distribution-free 95% intervals (`benchmarks.common.paired_ratio`).

    python -m benchmarks.ort_spinning        # writes benchmarks/results/ort_spinning.{json,md} (~3 minutes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, command_line, paired_ratio, write_result

ROUNDS, BATCH = 7, 64


def _img_per_s(f, batch: int, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return batch * n / (time.perf_counter() - t0)


def one(spinning: bool) -> dict:
    """One arm in this (fresh) process: medians over ROUNDS of alone / ORT / right after ORT."""
    import onnxruntime as ort
    import torch

    from cnnkit.deploy.export import write_onnx
    from cnnkit.models import create

    torch.manual_seed(0)
    model = create("resnet9", num_classes=10, in_chans=1, width=16).eval()
    x = torch.randn(BATCH, 1, 28, 28)
    with tempfile.TemporaryDirectory() as d, torch.inference_mode():
        path = str(Path(d) / "m.onnx")
        write_onnx(model, x[:1], path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        for _ in range(3):  # warm-up, not timed
            model(x), sess.run(None, feed)
        alone, onnx, after = [], [], []
        for _ in range(ROUNDS):
            alone.append(_img_per_s(lambda: model(x), BATCH, 20))
            onnx.append(_img_per_s(lambda: sess.run(None, feed), BATCH, 20))
            after.append(_img_per_s(lambda: model(x), BATCH, 5))
    return {"ort_spinning": spinning, "threads": torch.get_num_threads(), "torch_alone_img_s": statistics.median(alone),
            "ort_img_s": statistics.median(onnx), "torch_after_ort_img_s": statistics.median(after),
            "torch_after_over_alone": statistics.median(a / b for a, b in zip(after, alone))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--one", choices=("on", "off"), help=argparse.SUPPRESS)  # one arm, in this fresh process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one == "on")))
        return
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for p in range(args.pairs):
        for arm in (("on", "off") if p % 2 == 0 else ("off", "on")):
            out = subprocess.run([sys.executable, "-m", "benchmarks.ort_spinning", "--one", arm],
                                 capture_output=True, text=True, check=True)
            runs[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print({a: round(r[-1]["torch_after_over_alone"], 3) for a, r in runs.items()}, flush=True)
    keys = ("torch_alone_img_s", "ort_img_s", "torch_after_ort_img_s", "torch_after_over_alone")
    medians = {a: {k: statistics.median(r[k] for r in rs) for k in keys} for a, rs in runs.items()}
    pairs = list(zip(runs["off"], runs["on"]))
    result = {
        "command": command_line("benchmarks.ort_spinning"), "batch": BATCH, "rounds_per_process": ROUNDS,
        "method": "each arm in a fresh process, alternated (order swapped every other pair); per process the median "
                  "over its rounds; figures are medians of per-pair ratios off / on with distribution-free 95% "
                  "intervals",
        "runs": runs, "medians": medians,
        "after_over_alone_on": paired_ratio([on["torch_after_over_alone"] for _, on in pairs]),
        "after_over_alone_off": paired_ratio([off["torch_after_over_alone"] for off, _ in pairs]),
        "torch_after_ort_off_over_on": paired_ratio([off["torch_after_ort_img_s"] / on["torch_after_ort_img_s"]
                                                     for off, on in pairs]),
        "ort_off_over_on": paired_ratio([off["ort_img_s"] / on["ort_img_s"] for off, on in pairs]),
    }
    write_result("ort_spinning", result)

    def ci(r: dict) -> str:
        return f"{r['median']:.2f} ({r['interval'][0]:.2f}–{r['interval'][1]:.2f})"

    md = (f"{args.pairs} pairs of fresh processes; medians across processes, and paired ratios with 95% intervals.\n\n"
          "| ORT spinning | PyTorch alone img/s | ORT img/s | PyTorch right after ORT img/s | after / alone |\n"
          "| --- | ---: | ---: | ---: | ---: |\n")
    md += "".join(f"| {'on (default)' if a == 'on' else 'off (cnnkit)'} | {m['torch_alone_img_s']:,.0f} | "
                  f"{m['ort_img_s']:,.0f} | {m['torch_after_ort_img_s']:,.0f} | "
                  f"{ci(result['after_over_alone_' + a])} |\n" for a, m in medians.items())
    md += (f"\nPyTorch right after ORT, spinning off ÷ on: {ci(result['torch_after_ort_off_over_on'])}; "
           f"ORT's own throughput, off ÷ on: {ci(result['ort_off_over_on'])}.\n")
    (RESULTS / "ort_spinning.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
