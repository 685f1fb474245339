"""The explorer's speed and size, and a screenshot of each of its views.

- ResNet-9 (width 16) trained for one epoch on the full Fashion-MNIST (so the views show a real model), and
  ResNet-50 at 3×224×224 (random weights: the time and the payload do not depend on them).
- Server time: the `seconds` the overview answer reports (activations of every layer, top-8 channels of each
  quantized), median of 20 requests for an image already uploaded; the request's wall time on loopback; the
  payload in bytes.
- Page interactive: Debian's Chromium (Playwright), from navigation to the overview drawn (`body[data-ready]`:
  graph, gallery and overview fetched and every channel drawn), median of 5 loads, new page each time.
- Screenshots of every view, into benchmarks/results/explore/.

Targets (issue 16): ResNet-9 overview ≤ 100 ms server time and interactive ≤ 1.5 s; ResNet-50 at 224×224
≤ 2 s with the payload under 5 MB.

    python -m benchmarks.explore          # writes benchmarks/results/explore.json and the screenshots (~3 min)
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

from benchmarks.common import RESULTS, SHARED_DATA, write_result
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


def server_time(url: str, model: str, repeats: int = 20) -> dict:
    gallery = get(f"{url}/v1/models/{model}/explore/gallery")[0]["images"]
    if gallery:
        key = gallery[0]["id"]
    else:  # no test data for this checkpoint: upload one image
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (90, 140, 200)).save(buf, "PNG")
        req = urllib.request.Request(f"{url}/v1/models/{model}/explore/images", data=buf.getvalue(),
                                     headers={"Content-Type": "image/png"})
        key = json.loads(urllib.request.urlopen(req, timeout=120).read())["image"]
    get(f"{url}/v1/models/{model}/explore/images/{key}")  # activations computed once
    server, wall, size = [], [], 0
    for _ in range(repeats):
        body, size, seconds = get(f"{url}/v1/models/{model}/explore/images/{key}")
        server.append(body["seconds"])
        wall.append(seconds)
    graph, graph_bytes, _ = get(f"{url}/v1/models/{model}/explore/graph")
    return {"server_ms_median": 1000 * statistics.median(server), "request_ms_median": 1000 * statistics.median(wall),
            "payload_bytes": size, "graph_bytes": graph_bytes, "layers": len(graph["nodes"]), "repeats": repeats}


def page_times(browser, url: str, model: str, loads: int = 5) -> dict:
    times, draw = [], []
    for _ in range(loads):
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        t = time.perf_counter()
        page.goto(f"{url}/?model={model}")
        page.wait_for_selector("body[data-ready]", timeout=120_000)
        times.append(time.perf_counter() - t)
        draw.append(page.evaluate("window.cnnkitTimings.drawMs"))
        assert page.evaluate("document.body.dataset.ready") == "1"
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

    shot("overview", "main")
    page.locator("#input-section").screenshot(path=str(SHOTS / "input.png"))
    written.append("input.png")

    def open_channel(node: str, fy: float = 0.5, fx: float = 0.5) -> None:
        page.locator(f'canvas.ch[data-node="{node}"], canvas.vec[data-node="{node}"]').first.click()
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
    open_channel(first["conv"], 0.45, 0.5)
    shot("elastic-conv", "#detail-section")
    for kind in ("act", "pool", "bn", "add", "linear"):
        if kind in first:
            open_channel(first[kind], 0.4, 0.4)
            shot(f"formula-{kind}", "#detail-section")
    page.locator('canvas.vec[data-node="softmax"]').click()
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
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--chromium", default=os.environ.get("CNNKIT_CHROMIUM") or shutil.which("chromium"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

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
        site = export_site(Explorer(load_models([f"resnet9={run.run_dir}"], device="cpu")["resnet9"]),
                           work / "site", images=4)
        proc, url = start([f"resnet9={run.run_dir}", f"resnet50={r50}"])
        try:
            rows = {}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                for name in ("resnet9", "resnet50"):
                    rows[name] = {**server_time(url, name), **page_times(browser, url, name)}
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
            "command": "python -m benchmarks.explore"})
        print(json.dumps(targets, indent=2), "\n", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
