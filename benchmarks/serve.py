"""Serve under load, on loopback only: throughput, p50/p99 latency and mean batch size at 1, 8, 32 and 64
concurrent clients, batching on and off, side by side; then the bad-input and overload drills.

- Model-bound: ResNet-18 on 3×224×224 (random weights: speed does not depend on them). Its offline throughput
  at batch 32 in the same runtime (eager PyTorch, this process, same threads) is measured in the same run.
- Overhead-bound: ResNet-9 (width 16, as in the trainer-overhead benchmark) on 28×28, against a bare endpoint on
  the same server (the same multipart request, answered with a constant: the ceiling of the HTTP stack and the
  client), and against the predict route with the forward pass replaced by a constant (the route's ceiling).
- Bad-input drill: 1,000 malformed requests interleaved with 250 valid ones; counts 5xx, checks every valid
  answer against `cnnkit predict` offline, and the server's resident memory before and after.
- Overload drill: a queue of 4 images against 64 clients sending ResNet-18 work; 503s must come quickly and
  the server must answer normally once the load stops.

The server runs in a child process (`cnnkit.serve.serve`, the code `cnnkit serve` runs), the load generator
here (an asyncio loop of aiohttp clients, one keep-alive connection each), so both share this machine's cores: on 2 cores
the client's own CPU time is part of what is measured, for the bare endpoint as for the models. Every request
goes to 127.0.0.1; each level runs for a fixed time, bounded in count by the clients' closed loop.

    python -m benchmarks.serve                 # writes benchmarks/results/serve.json (about 6 minutes)
    python -m benchmarks.serve --quick         # shorter levels, for a look
    python -m benchmarks.serve --amp auto      # the load levels with the server in bf16 where the CPU runs it
                                               # natively (serve_auto.json; no drills: they compare with fp32)
    python -m benchmarks.serve --device cuda --amp auto --quick   # the load levels on a GPU
                                               # (serve_cuda_auto_quick.json)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import command_line, paired_ratio, write_result
from cnnkit.train.config import RECIPES

LEVELS = (1, 8, 32, 64)


def make_checkpoint(folder: Path, model: str, in_chans: int, size: int, **kw: object) -> Path:
    from cnnkit.artifacts import save_checkpoint
    from cnnkit.models import create

    torch.manual_seed(0)
    net = create(model, 10, in_chans, img_size=(size, size), **kw).eval()
    path = folder / f"{model}.safetensors"
    save_checkpoint(path, net, {"model": model, "model_kwargs": kw, "classes": [f"class{i}" for i in range(10)],
                                "in_chans": in_chans, "img_size": [size, size],
                                "normalization": {"mean": [0.5] * in_chans, "std": [0.25] * in_chans}})
    return path


def png_bytes(rng: np.random.Generator, size: int, channels: int) -> bytes:
    arr = rng.integers(0, 256, (size, size, channels) if channels == 3 else (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------ server

CHILD = r"""
import sys
from fastapi import Request
from cnnkit.serve import ServeOptions, load_models, serve
specs, max_batch, max_delay, max_queue = sys.argv[1].split(","), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
amp, device = sys.argv[5], sys.argv[6]
import os, torch
if os.environ.get("BENCH_NO_MODEL"):  # the route's ceiling: everything but the forward pass
    from cnnkit.serve.models import ServedModel
    ServedModel.predict_batch = lambda self, x, args, sizes: list(torch.full((len(x), 10), 0.1).split(sizes))
def hook(app):
    @app.post("/bench/constant")
    async def constant(request: Request):
        await request.body()
        return {"predictions": [{"top": [{"class": "class0", "index": 0, "probability": 1.0}]}]}
serve(load_models(specs, device, amp), "127.0.0.1", 0, ServeOptions(max_batch=max_batch, max_delay_ms=max_delay,
      max_queue=max_queue, timeout_s=30), on_ready=lambda url: print(url, flush=True), app_hook=hook)
"""


class Server:
    def __init__(self, specs: list[str], max_batch: int = 32, max_delay_ms: float = 5.0, max_queue: int = 256,
                 no_model: bool = False, amp: str = "off", device: str = "cpu"):
        from cnnkit.serve.client import Client

        env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"BENCH_NO_MODEL": "1"} if no_model else {})}
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, ",".join(specs), str(max_batch), str(max_delay_ms),
                                      str(max_queue), amp, device], stdout=subprocess.PIPE, text=True, env=env)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"server did not start: {self.url!r}")
        with Client(self.url) as c:
            c.wait_ready(60)

    def rss_mib(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024

    def batch_stats(self, model: str) -> tuple[float, float]:
        import httpx

        text = httpx.get(f"{self.url}/metrics").text
        def get(what: str) -> float:  # absent until the first batch
            m = re.search(rf'cnnkit_batch_images_{what}\{{kind="predict",model="{model}"\}} (\S+)', text)
            return float(m.group(1)) if m else 0.0

        return get("sum"), get("count")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------------------ client

async def drive(url: str, path: str, body: bytes, clients: int, seconds: float, warmup: float = 1.0) -> dict:
    """`clients` closed-loop clients POST the same multipart image for `seconds` (after `warmup`), each on a
    keep-alive connection of its own. aiohttp, not httpx: httpx's async connection pool stalled for whole
    seconds past about 16 concurrent connections here (p99 1.2 s against a constant endpoint at 32 clients,
    where sync httpx in threads and aiohttp see tens of milliseconds)."""
    import aiohttp

    lat: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as c:
        async def worker():
            while True:
                t = time.perf_counter()
                if t >= end:
                    return
                form = aiohttp.FormData()
                form.add_field("file", body, filename="x.png", content_type="image/png")
                async with c.post(path, data=form) as r:
                    await r.read()
                    status = r.status
                done = time.perf_counter()
                if t >= measure_from:
                    lat.append(done - t)
                    statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    ok = statuses.get(200, 0)
    return {"clients": clients, "requests": len(lat), "ok": ok, "statuses": statuses,
            "requests_per_s": ok / seconds, "p50_ms": 1e3 * float(np.percentile(lat, 50)) if lat else None,
            "p99_ms": 1e3 * float(np.percentile(lat, 99)) if lat else None,
            "max_ms": 1e3 * max(lat) if lat else None}


def level(server: Server, model: str, body: bytes, clients: int, seconds: float, path: str | None = None) -> dict:
    before = server.batch_stats(model)
    r = asyncio.run(drive(server.url, path or f"/v1/models/{model}/predict", body, clients, seconds))
    after = server.batch_stats(model)
    batches = after[1] - before[1]
    r["mean_batch"] = (after[0] - before[0]) / batches if batches else None
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    return r


def offline_throughput(ckpt: Path, batch: int = 32, seconds: float = 5.0, amp: str = "off", device: str = "cpu") -> dict:
    from cnnkit.artifacts import load
    from cnnkit.runtime import autocast, autocast_dtype, faster_inference_layout, reuse_freed_memory

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    loaded = load(ckpt)
    m = loaded.model.eval().to(dev)
    # the layout the server runs it in, chosen the same way
    dtype = autocast_dtype(amp, dev)  # the precision the server runs it in
    last = faster_inference_layout(m, (loaded.in_chans, *loaded.img_size), 8, dev, dtype=dtype)
    x = torch.randn(batch, loaded.in_chans, *loaded.img_size, device=dev)
    x = x.contiguous(memory_format=torch.channels_last) if last else x
    times = []
    # with the malloc limits the server runs under (cnnkit.serve.serve keeps freed memory for the next batch)
    with reuse_freed_memory(), torch.inference_mode(), autocast(dev, dtype):
        m(x)
        sync()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            t = time.perf_counter()
            m(x)
            sync()
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"batch": batch, "seconds_per_batch": med, "images_per_s": batch / med,
            "layout": "channels-last" if last else "NCHW"}


# ------------------------------------------------------------------------------------------------------ drills

def _png_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def malformed(rng: random.Random, png: bytes, jpeg: bytes) -> tuple[str, dict]:
    """One malformed request: (kind, httpx request kwargs for POST to the predict route unless 'path' given)."""
    kind = rng.choice(["random bytes", "truncated PNG", "truncated JPEG", "zero bytes", "huge dimensions",
                       "wrong content type", "oversized body", "bad JSON", "bad base64", "unknown model",
                       "target out of range", "unknown method", "unknown layer", "no file"])
    f = lambda name, data: {"files": [("file", (name, data))]}  # noqa: E731
    if kind == "random bytes":
        return kind, f("r.png", rng.randbytes(rng.randint(1, 4096)))
    if kind == "truncated PNG":
        return kind, f("t.png", png[:rng.randint(8, len(png) - 1)])
    if kind == "truncated JPEG":
        return kind, f("t.jpg", jpeg[:rng.randint(2, len(jpeg) - 1)])
    if kind == "zero bytes":
        return kind, f("z.png", b"")
    if kind == "huge dimensions":
        return kind, f("h.png", _png_claiming(rng.choice([70_000, 200_000, 2**31 - 1]), 65_535))
    if kind == "wrong content type":
        return kind, {"content": png, "headers": {"content-type": rng.choice(["text/html", "text/plain", ""])}}
    if kind == "oversized body":
        return kind, f("big.png", b"\0" * (17 * 2**20))
    if kind == "bad JSON":
        return kind, {"content": b'{"images": [', "headers": {"content-type": "application/json"}}
    if kind == "bad base64":
        return kind, {"json": {"images": ["not base64!"]}}
    if kind == "unknown model":
        return kind, {**f("x.png", png), "path": "/v1/models/nope/predict"}
    if kind == "target out of range":
        return kind, {**f("x.png", png), "path": "/v1/models/{m}/explain?target=99"}
    if kind == "unknown method":
        return kind, {**f("x.png", png), "path": "/v1/models/{m}/explain?method=magic"}
    if kind == "unknown layer":
        return kind, {**f("x.png", png), "path": "/v1/models/{m}/explain?layer=nope"}
    return kind, {"files": [("other", ("", b""))], "data": {"topk": "3"}}


def bad_input_drill(ckpt: Path, n_bad: int = 1000, n_good: int = 250, seed: int = 0) -> dict:
    import httpx

    from cnnkit.evaluate import predict

    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    model = ckpt.stem
    with tempfile.TemporaryDirectory() as tmp:
        goods = []
        for i in range(16):
            p = Path(tmp) / f"good{i}.{'png' if i % 2 else 'jpg'}"
            arr = nrng.integers(0, 256, (28 + i, 28 + 2 * i), dtype=np.uint8)
            Image.fromarray(arr).save(p)
            goods.append(p)
        offline = {p.name: predict(ckpt, [p], topk=3, device="cpu")[0].top for p in goods}
        png, jpeg = goods[1].read_bytes(), goods[0].read_bytes()
        server = Server([str(ckpt)])
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                for p in goods:  # warm every path once before the memory baseline
                    c.post(f"/v1/models/{model}/predict?topk=3", files=[("file", (p.name, p.read_bytes()))])
                rss_before = server.rss_mib()
                plan = ["bad"] * n_bad + ["good"] * n_good
                rng.shuffle(plan)
                statuses: dict[str, dict[int, int]] = {}
                mismatches, fivexx = 0, 0
                for what in plan:
                    if what == "good":
                        p = rng.choice(goods)
                        r = c.post(f"/v1/models/{model}/predict?topk=3", files=[("file", (p.name, p.read_bytes()))])
                        got = [(t["class"], t["probability"]) for t in r.json()["predictions"][0]["top"]]
                        exp = offline[p.name]
                        if r.status_code != 200 or [g[0] for g in got] != [e[0] for e in exp] or not np.allclose(
                                [g[1] for g in got], [e[1] for e in exp], atol=1e-5):
                            mismatches += 1
                        kind = "valid"
                    else:
                        kind, kw = malformed(rng, png, jpeg)
                        path = kw.pop("path", "/v1/models/{m}/predict").format(m=model)
                        r = c.post(path, **kw)
                    statuses.setdefault(kind, {})
                    statuses[kind][r.status_code] = statuses[kind].get(r.status_code, 0) + 1
                    fivexx += r.status_code >= 500
                rss_after = server.rss_mib()
        finally:
            code = server.stop()
    return {"malformed": n_bad, "valid": n_good, "responses_5xx": fivexx, "valid_mismatches": mismatches,
            "statuses_by_kind": statuses, "rss_mib_before": rss_before, "rss_mib_after": rss_after,
            "rss_growth": rss_after / rss_before - 1, "exit_status_after_sigterm": code}


def overload_drill(ckpt: Path, clients: int = 64, seconds: float = 6.0) -> dict:
    import httpx

    body = png_bytes(np.random.default_rng(1), 224, 3)
    server = Server([str(ckpt)], max_batch=4, max_delay_ms=5, max_queue=4)
    try:
        t = time.perf_counter()
        r = asyncio.run(drive(server.url, f"/v1/models/{ckpt.stem}/predict", body, clients, seconds, warmup=0.5))
        wall = time.perf_counter() - t
        # the latencies of the refusals alone
        lat503 = asyncio.run(_refusal_latency(server.url, f"/v1/models/{ckpt.stem}/predict", body, clients))
        time.sleep(1.0)
        t = time.perf_counter()
        after = httpx.post(f"{server.url}/v1/models/{ckpt.stem}/predict", files=[("file", ("x.png", body))], timeout=30)
        recovered = {"status": after.status_code, "seconds": time.perf_counter() - t,
                     "readyz": httpx.get(f"{server.url}/readyz").status_code}
    finally:
        code = server.stop()
    return {"clients": clients, "max_queue": 4, "max_batch": 4, "load": r, "wall_s": wall,
            "refusals": lat503, "after_load": recovered, "exit_status_after_sigterm": code}


async def _refusal_latency(url: str, path: str, body: bytes, clients: int, rounds: int = 5) -> dict:
    import aiohttp

    lat, retry_after = [], set()
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients)) as c:
        async def one():
            form = aiohttp.FormData()
            form.add_field("file", body, filename="x.png", content_type="image/png")
            t = time.perf_counter()
            async with c.post(path, data=form) as r:
                await r.read()
                if r.status == 503:
                    lat.append(time.perf_counter() - t)
                    retry_after.add(r.headers.get("retry-after"))

        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(clients)))
    return {"count": len(lat), "p50_ms": 1e3 * float(np.percentile(lat, 50)) if lat else None,
            "p99_ms": 1e3 * float(np.percentile(lat, 99)) if lat else None, "retry_after": sorted(map(str, retry_after))}


def paired_rounds(r18: Path, r9: Path, body18: bytes, body9: bytes, rounds: int, seconds: float, amp: str,
                  device: str) -> list[dict]:
    """Each round starts fresh server processes and measures both sides of every ratio back to back, the order
    of the two sides swapped every other round: ResNet-18 offline at batch 32 and 32 clients with batching on
    and off (two servers up at once, one driven at a time); ResNet-9 at 32 clients and the bare endpoint on the
    same server."""
    out: list[dict] = [{} for _ in range(rounds)]
    for i, r in enumerate(out):
        servers: list[Server] = []
        try:
            for max_batch in (32, 1):
                servers.append(Server([str(r18)], max_batch=max_batch, amp=amp, device=device))
            on, off = servers
            offline = offline_throughput(r18, seconds=3.0, amp=amp, device=device)
            if i % 2 == 0:
                a, b = level(on, "resnet18", body18, 32, seconds), level(off, "resnet18", body18, 32, seconds)
            else:
                b, a = level(off, "resnet18", body18, 32, seconds), level(on, "resnet18", body18, 32, seconds)
            bound = 5.0 + 2e3 * offline["seconds_per_batch"]
            r.update({"resnet18_offline_batch32": offline["images_per_s"], "resnet18_on": a["requests_per_s"],
                      "resnet18_off": b["requests_per_s"], "resnet18_p99_ms": a["p99_ms"], "resnet18_p99_bound_ms": bound,
                      "resnet18_over_offline": a["requests_per_s"] / offline["images_per_s"],
                      "resnet18_p99_over_bound": a["p99_ms"] / bound,
                      "resnet18_on_over_off": a["requests_per_s"] / b["requests_per_s"]})
        finally:
            for server in servers:  # both, or the one that started
                server.stop()
        server = Server([str(r9)], amp=amp, device=device)
        try:
            if i % 2 == 0:
                a = level(server, "resnet9", body9, 32, seconds)
                c = level(server, "resnet9", body9, 32, seconds, "/bench/constant")
            else:
                c = level(server, "resnet9", body9, 32, seconds, "/bench/constant")
                a = level(server, "resnet9", body9, 32, seconds)
            r.update({"resnet9_on": a["requests_per_s"], "resnet9_constant": c["requests_per_s"],
                      "resnet9_over_constant": a["requests_per_s"] / c["requests_per_s"]})
        finally:
            server.stop()
        print("round", i, json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 s levels and a smaller drill, for a look")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--amp", choices=("off", "auto"), default="off",
                    help="the server's precision (`cnnkit serve --amp`); auto: bf16 where the CPU runs it natively")
    ap.add_argument("--rounds", type=int, default=6,
                    help="paired rounds, each with fresh servers, that decide the targets (median and 95%% interval)")
    ap.add_argument("--device", default="cpu", help="where the server runs the models (cpu or cuda; the load "
                    "levels only: the drills run on the CPU)")
    args = ap.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    result: dict = {"seconds_per_level": seconds, "levels": LEVELS, "max_delay_ms": 5.0, "amp": args.amp,
                    "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "server_torch_threads": torch.get_num_threads(), "client": f"aiohttp {__import__('aiohttp').__version__}"}
    with tempfile.TemporaryDirectory() as tmp:
        r18 = make_checkpoint(Path(tmp), "resnet18", 3, 224)
        # what `cnnkit train --data fashion-mnist` trains (ResNet-9 width 16, pooling before BN)
        r9 = make_checkpoint(Path(tmp), "resnet9", 1, 28, **RECIPES["fast"]["mnist-like"]["model_kwargs"])
        body18 = png_bytes(np.random.default_rng(0), 224, 3)
        body9 = png_bytes(np.random.default_rng(0), 28, 1)
        for name, ckpt, body in (("resnet18", r18, body18), ("resnet9", r9, body9)):
            offline = offline_throughput(ckpt, amp=args.amp, device=args.device)
            offline1 = offline_throughput(ckpt, batch=1, amp=args.amp, device=args.device)
            print(name, "offline", offline, offline1, flush=True)
            rows = {}
            for mode, max_batch in (("on", 32), ("off", 1)):
                server = Server([str(ckpt)], max_batch=max_batch, amp=args.amp, device=args.device)
                try:
                    rows[mode] = [level(server, name, body, n, seconds) for n in LEVELS]
                    if name == "resnet9" and mode == "on":
                        rows["constant"] = [level(server, name, body, n, seconds, "/bench/constant") for n in LEVELS]
                finally:
                    server.stop()
            if name == "resnet9":  # the same route with the forward pass replaced by a constant
                server = Server([str(ckpt)], no_model=True, amp=args.amp, device=args.device)
                try:
                    rows["no_model"] = [level(server, name, body, n, seconds) for n in (8, 32)]
                finally:
                    server.stop()
            result[name] = {"offline_batch32": offline, "offline_batch1": offline1, **rows}
        # the targets, from paired rounds: this machine's speed drifts by 10-25% between minutes, so a ratio of two
        # figures taken minutes apart (the tables above) can land anywhere; each round measures both sides of a
        # ratio back to back, and the targets take the median round
        result["paired_rounds"] = paired_rounds(r18, r9, body18, body9, 1 if args.quick else args.rounds, seconds,
                                                args.amp, args.device)
        ratio = lambda key: paired_ratio([r[key] for r in result["paired_rounds"]])  # noqa: E731
        result["targets"] = {
            "rounds": len(result["paired_rounds"]),
            "resnet18_32_clients_over_offline_batch32": ratio("resnet18_over_offline"),
            "resnet18_p99_over_bound": ratio("resnet18_p99_over_bound"),
            "resnet9_32_clients_over_constant": ratio("resnet9_over_constant"),
            "resnet18_batching_on_over_off_at_32": ratio("resnet18_on_over_off"),
        }
        result["command"] = command_line("benchmarks.serve")
        print(json.dumps(result["targets"], indent=1), flush=True)
        name = "serve" + ("_cuda" if args.device.startswith("cuda") else "") + ("_auto" if args.amp != "off" else "")
        if args.amp != "off" or args.device != "cpu":  # the drills compare with `cnnkit predict` on the CPU in fp32
            print(write_result(name + ("_quick" if args.quick else ""), result))
            return
        result["bad_input_drill"] = bad_input_drill(r9, 300 if args.quick else 1000, 75 if args.quick else 250)
        print(json.dumps({k: v for k, v in result["bad_input_drill"].items() if k != "statuses_by_kind"}), flush=True)
        result["overload_drill"] = overload_drill(r18)
        print(json.dumps(result["overload_drill"], default=str), flush=True)
    print(write_result("serve" + ("_quick" if args.quick else ""), result))


if __name__ == "__main__":
    main()
