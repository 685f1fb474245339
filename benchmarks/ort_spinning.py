"""Why cnnkit's ONNX Runtime sessions run with intra-op spinning off: with ORT's default (spinning on),
its idle threads keep the cores busy after each run, and a PyTorch call made right after pays for it.

For each setting, rounds of: PyTorch eager throughput alone, ORT throughput, then PyTorch eager again right
after ORT; the same resnet9 (width 16, untrained weights: speed does not depend on them) at batch 64 on
28×28 inputs, 2 torch threads and as many ORT threads.

    python -m benchmarks.ort_spinning        # writes benchmarks/results/ort_spinning.{json,md}
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, command_line, write_result
from cnnkit.deploy.artifacts import _write_onnx
from cnnkit.models import create


def _img_per_s(f, batch: int, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return batch * n / (time.perf_counter() - t0)


def main(rounds: int = 7, batch: int = 64) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create("resnet9", num_classes=10, in_chans=1, width=16).eval()
    x = torch.randn(batch, 1, 28, 28)
    rows = []
    with tempfile.TemporaryDirectory() as d, torch.inference_mode():
        path = str(Path(d) / "m.onnx")
        _write_onnx(model, x[:1], path)
        for spinning in (True, False):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x.numpy()}
            for _ in range(3):
                model(x), sess.run(None, feed)
            alone, onnx, after = [], [], []
            for _ in range(rounds):
                alone.append(_img_per_s(lambda: model(x), batch, 20))
                onnx.append(_img_per_s(lambda: sess.run(None, feed), batch, 20))
                after.append(_img_per_s(lambda: model(x), batch, 5))
            rows.append({"ort_spinning": spinning, "torch_alone_img_s": statistics.median(alone),
                         "ort_img_s": statistics.median(onnx), "torch_after_ort_img_s": statistics.median(after)})
    for r in rows:
        r["torch_after_ort_ratio"] = r["torch_after_ort_img_s"] / r["torch_alone_img_s"]
    write_result("ort_spinning", {"command": command_line("benchmarks.ort_spinning"),
                                  "rounds": rounds, "batch": batch, "threads": torch.get_num_threads(), "rows": rows})
    md = ("| ORT spinning | PyTorch alone img/s | ORT img/s | PyTorch right after ORT img/s | after / alone |\n"
          "| --- | --- | --- | --- | --- |\n")
    md += "".join(f"| {'on (default)' if r['ort_spinning'] else 'off (cnnkit)'} | {r['torch_alone_img_s']:,.0f} | "
                  f"{r['ort_img_s']:,.0f} | {r['torch_after_ort_img_s']:,.0f} | {r['torch_after_ort_ratio']:.2f} |\n"
                  for r in rows)
    (RESULTS / "ort_spinning.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
