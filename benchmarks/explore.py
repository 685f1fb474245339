"""The explorer's speed and size, and a screenshot of each of its views.

- ResNet-9 (width 16) trained for one epoch on the full Fashion-MNIST (so the views show a real model), and
  ResNet-50 at 3×224×224 (random weights: the time and the payload do not depend on them).
- Server time: the `seconds` the overview answer reports (every layer's activations computed, top-8 channels of
  each quantized), median of 20 uploads of images the server has not seen; the request's wall time on loopback
  (decoding and transfer included); the largest payload in bytes; and for comparison an image already seen
  (activations cached).
- Page interactive: Debian's Chromium (Playwright), from navigation to the overview drawn (`body[data-ready]`:
  graph, gallery and overview fetched and every channel drawn), median of 5 loads, new page each time, none of
  them with cached activations.
- Screenshots of every view, into benchmarks/results/explore/; with `--tasks`, also of a segmentation (U-Net), a
  detection (FCOS) and a restoration (ESPCN ×3) run, each trained for 90 s on this CPU (`--budget 90s`): the
  views, not the models' quality, are what they show.

Targets (issue 16): ResNet-9 overview ≤ 100 ms server time and interactive ≤ 1.5 s; ResNet-50 at 224×224
≤ 2 s with the payload under 5 MB.

    python -m benchmarks.explore          # writes benchmarks/results/explore.json and the screenshots (~3 min)
    python -m benchmarks.explore --tasks  # only the three tasks' screenshots (~6 min)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import RESULTS, SHARED_DATA, command_line, write_result
from benchmarks.serve import make_checkpoint

SHOTS = RESULTS / "explore"


def get(url: str) -> tuple[dict, int, float]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return json.loads(body), len(body), time.perf_counter() - t


def start(specs: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "cnnkit", "explore", *specs, "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        found = re.search(r"open (http://127\.0\.0\.1:\d+)/", line)
        if found:
            return proc, found.group(1)
    raise SystemExit("cnnkit explore did not start")


def upload(url: str, model: str, seed: int, size: int) -> tuple[dict, int, float]:
    """POST a new image (random pixels: never seen before, so nothing is cached) -> its overview."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    req = urllib.request.Request(f"{url}/v1/models/{model}/explore/images", data=buf.getvalue(),
                                 headers={"Content-Type": "image/png"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        body = r.read()
    return json.loads(body), len(body), time.perf_counter() - t


def server_time(url: str, model: str, size: int, repeats: int = 20) -> dict:
    """Overviews of images the server has not seen (its activations computed in the time reported), and of
    one it has (activations cached: only the top-k selection and encoding)."""
    upload(url, model, 10_000, size)  # the first request traces nothing (done at start) but warms the allocator
    fresh, wall, sizes = [], [], []
    for i in range(repeats):
        body, n, seconds = upload(url, model, i, size)
        fresh.append(body["seconds"])
        wall.append(seconds)
        sizes.append(n)
    key = body["image"]
    cached = [get(f"{url}/v1/models/{model}/explore/images/{key}")[0]["seconds"] for _ in range(repeats)]
    graph, graph_bytes, _ = get(f"{url}/v1/models/{model}/explore/graph")
    return {"server_ms_median": 1000 * statistics.median(fresh), "server_ms_max": 1000 * max(fresh),
            "request_ms_median": 1000 * statistics.median(wall), "cached_server_ms_median": 1000 * statistics.median(cached),
            "payload_bytes": max(sizes), "graph_bytes": graph_bytes, "layers": len(graph["nodes"]), "repeats": repeats}


def page_times(browser, url: str, model: str, size: int, loads: int = 5) -> dict:
    """Navigation to overview drawn; before each load, four new images are uploaded so that the gallery
    image the page opens has no cached activations (the explorer keeps those of the last four images)."""
    times, draw = [], []
    for i in range(loads):
        for j in range(4):
            upload(url, model, 1000 + 10 * i + j, size)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        t = time.perf_counter()
        page.goto(f"{url}/?model={model}")
        page.wait_for_selector("body[data-ready]", timeout=120_000)
        times.append(time.perf_counter() - t)
        assert page.evaluate("document.body.dataset.ready") == "1"
        draw.append(page.evaluate("window.cnnkitTimings.drawMs"))
        page.close()
    return {"interactive_s_median": statistics.median(times), "interactive_s_all": times,
            "draw_ms_median": statistics.median(draw), "loads": loads}


def screenshots(browser, url: str, model: str, site: Path) -> list[str]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(f"{url}/?model={model}")
    page.wait_for_selector("body[data-ready]")
    written = []

    def shot(name: str, selector: str | None = None) -> None:
        path = SHOTS / f"{name}.png"
        (page.locator(selector).screenshot(path=str(path)) if selector else page.screenshot(path=str(path)))
        written.append(path.name)

    shot("overview", "#overview-section")
    shot("page", None)
    page.locator("#input-section").screenshot(path=str(SHOTS / "input.png"))
    written.append("input.png")

    def open_channel(node: str, fy: float = 0.5, fx: float = 0.5) -> None:
        page.evaluate("window.scrollTo(0, 0)")
        page.locator(f'canvas.ch[data-node="{node}"], canvas.vec[data-node="{node}"], '
                     f'.classes[data-node="{node}"] .cls.predicted').first.click()
        page.wait_for_function(f"document.body.dataset.detail && document.body.dataset.detail.startsWith('{node}:')")
        out = page.locator("#detail canvas.map").last
        if out.count():
            out.scroll_into_view_if_needed()
            box = out.bounding_box()
            out.hover(position={"x": box["width"] * fx, "y": box["height"] * fy})
        page.wait_for_timeout(150)

    graph = get(f"{url}/v1/models/{model}/explore/graph")[0]["nodes"]
    first = {}
    for n in graph:
        first.setdefault(n["kind"], n["id"])
    convs = [n["id"] for n in graph if n["kind"] == "conv"]
    open_channel(convs[1], 0.45, 0.5)  # the second: several input channels, each with the map it gives
    shot("elastic-conv", "#detail-section")
    for kind in ("act", "pool", "bn", "add", "linear"):
        if kind in first:
            open_channel(first[kind], 0.4, 0.4)
            shot(f"formula-{kind}", "#detail-section")
    page.evaluate("window.scrollTo(0, 0)")
    page.locator('.classes[data-node="softmax"] .cls.predicted').click()
    page.wait_for_function("document.body.dataset.detail.startsWith('softmax')")
    shot("formula-softmax", "#detail-section")
    page.locator(".scorebar").first.click()
    page.wait_for_function("document.querySelectorAll('.why-card[data-done], .why-card .error').length === 6",
                           timeout=120_000)
    shot("why-this-class", "#why-section")
    page.locator("#pg-pad").fill("1")
    page.locator("#pg-stride").fill("2")
    page.locator("#pg-output rect").nth(4).hover()
    shot("playground", "#playground-section")
    page.goto(site.resolve().as_uri())
    page.wait_for_selector("body[data-ready]")
    shot("static-export", "#overview-section")
    page.close()
    phone = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's width
    phone.goto(f"{url}/?model={model}")
    phone.wait_for_selector("body[data-ready]")
    phone.screenshot(path=str(SHOTS / "phone.png"))
    written.append("phone.png")
    phone.close()
    return written


TASK_RUNS = {  # name -> what `fit` trains, each for TASK_BUDGET seconds
    "seg": {"model": "unet_small", "model_kwargs": {"width": 16, "depth": 2}, "data": "fashion-scenes"},
    "det": {"model": "fcos_small", "data": "fashion-scenes"},
    "sr": {"model": "espcn", "model_kwargs": {"scale": 3}, "data": "photographs"},
}
TASK_BUDGET = 90


def task_screenshots(browser, work: Path, data_dir: str) -> list[str]:
    """Train each of TASK_RUNS for TASK_BUDGET seconds, explore them, and screenshot their overviews' ends, a
    layer of their own (the transposed convolution, the pyramid's addition, the pixel shuffle) and "why"."""
    from cnnkit.train import fit

    runs = {name: fit(**spec, data_dir=data_dir, budget=TASK_BUDGET, out=str(work / name), progress=False).run_dir
            for name, spec in TASK_RUNS.items()}
    proc, url = start([f"{n}={p}" for n, p in runs.items()] + ["--score-threshold", "0.3"])
    written = []
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        for name, layer, why in (("seg", "upconv", '.classes[data-node="mask"] .cls.predicted'),
                                 ("det", "add", '.classes[data-node="boxes"] .cls.predicted'),
                                 ("sr", "shuffle", "img.restored")):
            page.goto(f"{url}/?model={name}")
            page.wait_for_selector("body[data-ready]")
            page.evaluate("document.querySelector('#overview').scrollLeft = 1e6")
            page.locator("#overview-section").screenshot(path=str(SHOTS / f"task-{name}-overview.png"))
            page.locator(f'.col[data-kind="{layer}"] canvas.ch').first.click()
            page.wait_for_function("document.body.dataset.detail")
            out = page.locator("#detail canvas.map").last
            out.scroll_into_view_if_needed()
            box = out.bounding_box()
            out.hover(position={"x": box["width"] * 0.45, "y": box["height"] * 0.55})
            page.locator("#detail-section").screenshot(path=str(SHOTS / f"task-{name}-{layer}.png"))
            page.locator(why).first.click()
            page.wait_for_function("document.querySelectorAll('.why-card[data-done], .why-card .error').length === 2",
                                   timeout=120_000)
            page.locator("#why-section").screenshot(path=str(SHOTS / f"task-{name}-why.png"))
            written += [f"task-{name}-overview.png", f"task-{name}-{layer}.png", f"task-{name}-why.png"]
        page.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return written


def photos_for(checkpoint: Path, run_dir: Path, folder: Path, per_class: int = 3) -> None:
    """Give the random ResNet-50 checkpoint a dataset its gallery can show: an image folder of its ten class
    names holding Fashion-MNIST test images as RGB files (resized to 224×224 when loaded)."""
    from PIL import Image

    from cnnkit.artifacts import load, save_checkpoint
    from cnnkit.data import load_dataset

    test = load_dataset("sample", "test")
    ckpt = load(checkpoint)
    for c, name in enumerate(ckpt.classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.fromarray(test.images[c * per_class + j, 0].numpy(), "L").convert("RGB").save(folder / name / f"{j}.png")
    meta = {**ckpt.meta, "dataset": {"name": f"imagefolder:{folder}", "test_fraction": 0.34, "split_seed": 0}}
    save_checkpoint(checkpoint, ckpt.model, meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--chromium", default=os.environ.get("CNNKIT_CHROMIUM") or shutil.which("chromium"))
    ap.add_argument("--tasks", action="store_true", help="only the segmentation, detection and restoration screenshots")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    if args.tasks:
        work = Path(tempfile.mkdtemp(prefix="cnnkit-explore-tasks-"))
        try:
            SHOTS.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                print("\n".join(task_screenshots(browser, work, args.data_dir)))
                browser.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return

    from cnnkit.serve import load_models
    from cnnkit.serve.explore import Explorer, export_site
    from cnnkit.train import fit

    work = Path(tempfile.mkdtemp(prefix="cnnkit-explore-bench-"))
    try:
        t = time.perf_counter()
        run = fit(model="resnet9", model_kwargs={"width": 16}, data="fashion-mnist", data_dir=args.data_dir,
                  epochs=1, out=str(work / "resnet9"), progress=False)
        train_s = time.perf_counter() - t
        r50 = make_checkpoint(work, "resnet50", 3, 224)
        photos_for(r50, run.run_dir, work / "photos")
        site = export_site(Explorer(load_models([f"resnet9={run.run_dir}"], device="cpu")["resnet9"]),
                           work / "site", images=4)
        proc, url = start([f"resnet9={run.run_dir}", f"resnet50={r50}"])
        try:
            rows = {}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                for name, size in (("resnet9", 28), ("resnet50", 224)):
                    rows[name] = {**server_time(url, name, size), **page_times(browser, url, name, size)}
                    print(name, json.dumps(rows[name]), flush=True)
                shots = screenshots(browser, url, "resnet9", site)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
        r9, r50row = rows["resnet9"], rows["resnet50"]
        targets = {
            "resnet9_server_ms<=100": r9["server_ms_median"] <= 100,
            "resnet9_interactive_s<=1.5": r9["interactive_s_median"] <= 1.5,
            "resnet50_server_s<=2": r50row["server_ms_median"] <= 2000,
            "resnet50_interactive_s<=2": r50row["interactive_s_median"] <= 2.0,
            "resnet50_payload<5MB": r50row["payload_bytes"] < 5e6,
        }
        path = write_result("explore", {
            "models": {"resnet9": f"width 16, 1 epoch on Fashion-MNIST ({run.best_val_acc:.3f} val acc, "
                                  f"{train_s:.0f} s), 1×28×28", "resnet50": "random weights, 3×224×224"},
            "results": rows, "targets_met": targets, "screenshots": shots,
            "static_export_bytes": site.stat().st_size, "static_export_images": 4,
            "static_export_mb_per_image": round(site.stat().st_size / 4 / 1e6, 2),
            "command": command_line("benchmarks.explore")})
        print(json.dumps(targets, indent=2), "\n", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
