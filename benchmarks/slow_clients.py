"""Slow clients against `cnnkit serve`, on loopback only: does a healthy client still get its answers while
hundreds of connections trickle their requests, is nothing ever answered 5xx, and how long does SIGTERM take
with slow clients attached?

- The server: a real `cnnkit serve` child process on 127.0.0.1 (ResNet-9, width 16, on 28×28, random weights),
  limited to 256 open files (`ulimit -n 256`, so its connection limit is 256 - 64 = 192), `--timeout 10`.
- The attack, for 30 s: 300 connections, each sending one byte every 2 s of headers that never end (280), or
  of a body after complete headers (20); a connection the server closes is opened again after 1 s, so the
  pressure holds for the whole time. The attacker is this process (asyncio streams).
- The healthy client, meanwhile: GET /healthz every 0.1 s and POST one PNG to predict every 0.25 s, each on a
  new connection (a load balancer's probe, a client arriving during the attack); the same for 5 s before the
  attack, for comparison. aiohttp, as in benchmarks/serve.py.
- Then SIGTERM with the attack still attached: seconds until the process exits, and its exit status. The
  server's stderr is kept: tracebacks and 500s are counted (the answer must be 0).

Every request goes to 127.0.0.1; counts and durations are bounded as above (about 50 s in all).

    python -m benchmarks.slow_clients          # writes benchmarks/results/slow_clients.json
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import command_line, write_result
from benchmarks.serve import make_checkpoint, png_bytes


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    m = re.search(r"^Model name:\s*(.+)$", out, re.M)
    return m.group(1).strip() if m else "unknown"


def start_server(ckpt: Path, timeout: float, nofile: int) -> tuple[subprocess.Popen, str]:
    def limit_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen([sys.executable, "-m", "cnnkit", "serve", f"resnet9={ckpt}", "--port", "0", "--timeout",
                             str(timeout), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=limit_files)
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not m:
        raise SystemExit(f"the server did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}")
    from cnnkit.serve.client import Client

    with Client(m.group(0)) as c:
        c.wait_ready(120)
    return proc, m.group(0)


class Attacker:
    """`n` slow connections kept open for as long as `stop` is unset (each opened again 1 s after the server
    closes it); what the server did to them, counted."""

    def __init__(self, port: int, n: int, bodies: int, every: float):
        self.port, self.n, self.bodies, self.every = port, n, bodies, every
        self.outcomes: Counter[str] = Counter()
        self.opened = 0
        self.stop = asyncio.Event()

    async def one(self, body: bool) -> None:
        head = (f"POST /v1/models/resnet9/predict HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: image/png"
                f"\r\nContent-Length: 100000\r\n\r\n").encode() if body else b""
        filler = b"a" if body else b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100000
        while not self.stop.is_set():
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as e:
                self.outcomes[f"connect failed: {type(e).__name__}"] += 1
                await asyncio.sleep(1)
                continue
            self.opened += 1
            w.write(head)
            got, i = None, 0
            try:
                while not self.stop.is_set():
                    w.write(filler[i % len(filler):i % len(filler) + 1])
                    i += 1
                    try:
                        got = await asyncio.wait_for(r.read(200), self.every)
                        break
                    except asyncio.TimeoutError:
                        continue
            except (ConnectionError, OSError):
                got = b""
            w.close()
            if got is None:  # still open when the drill ended
                self.outcomes["open at the end"] += 1
                return
            status = re.match(rb"HTTP/1.1 (\d+)", got)
            self.outcomes[("body " if body else "headers ") + (status.group(1).decode() if status else "closed")] += 1
            await asyncio.sleep(1)

    def run(self) -> list[asyncio.Task]:
        return [asyncio.ensure_future(self.one(i < self.bodies)) for i in range(self.n)]


async def healthy(url: str, png: bytes, seconds: float) -> dict:
    """/healthz every 0.1 s and a prediction every 0.25 s, each on a new connection, for `seconds`."""
    import aiohttp

    results: dict[str, list] = {"healthz": [], "predict": []}

    async def loop(kind: str, every: float):
        end = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=30)
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                                 timeout=timeout) as s:
                    if kind == "healthz":
                        async with s.get(f"{url}/healthz") as r:
                            await r.read()
                            status = str(r.status)
                    else:
                        form = aiohttp.FormData()
                        form.add_field("file", png, filename="x.png", content_type="image/png")
                        async with s.post(f"{url}/v1/models/resnet9/predict", data=form) as r:
                            await r.read()
                            status = str(r.status)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                status = type(e).__name__
            results[kind].append((status, time.perf_counter() - t))
            await asyncio.sleep(max(0.0, every - (time.perf_counter() - t)))

    await asyncio.gather(loop("healthz", 0.1), loop("predict", 0.25))
    return {k: summary(v) for k, v in results.items()}


def summary(rows: list[tuple[str, float]]) -> dict:
    ok = [s for st, s in rows if st == "200"]
    statuses = Counter(st for st, _ in rows)
    pct = (lambda q: round(1e3 * float(np.percentile(ok, q)), 2)) if ok else (lambda q: None)
    return {"requests": len(rows), "ok": len(ok), "success_rate": round(len(ok) / len(rows), 4) if rows else None,
            "statuses": dict(statuses), "http_5xx": sum(n for st, n in statuses.items() if st.startswith("5")),
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": round(1e3 * max(ok), 2) if ok else None}


def open_fds(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


async def drill(proc: subprocess.Popen, url: str, png: bytes, args: argparse.Namespace) -> dict:
    port = int(url.rsplit(":", 1)[1])
    await healthy(url, png, 0.5)  # not measured: the client's first requests set aiohttp up (~0.3 s)
    idle = await healthy(url, png, args.idle_seconds)
    attacker = Attacker(port, args.connections, args.bodies, args.every)
    tasks = attacker.run()
    fds: list[int] = []

    async def sample():
        while not attacker.stop.is_set():
            fds.append(open_fds(proc.pid))
            await asyncio.sleep(0.5)

    sampler = asyncio.ensure_future(sample())
    await asyncio.sleep(2)  # the attack in place first
    during = await healthy(url, png, args.seconds)
    import httpx

    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    closed_early = {m.group(1): float(m.group(2)) for m in
                    re.finditer(r'cnnkit_connections_closed_early_total\{reason="(\w+)"\} (\S+)', metrics)}
    statuses = {f"{m.group(1)} {m.group(2)}": float(m.group(3)) for m in
                re.finditer(r'cnnkit_requests_total\{route="([^"]+)",status="(\d+)"\} (\S+)', metrics)}
    outcomes = dict(attacker.outcomes)  # before the shutdown closes them all
    # SIGTERM with the attack still attached
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, args.timeout + 60)
    except subprocess.TimeoutExpired:
        code = None  # not within --timeout + 60 s: killed by main()
    sigterm_s = time.monotonic() - t
    attacker.stop.set()
    await asyncio.gather(*tasks, sampler)
    return {"idle": idle, "attack": {**during, "server_open_fds_max": max(fds), "attacker_connections_opened":
                                     attacker.opened, "attacker_outcomes": outcomes,
                                     "server_closed_early": closed_early, "server_requests_by_status": statuses},
            "sigterm": {"exit_status": code, "seconds_to_exit": round(sigterm_s, 2),
                        "slow_connections_attached": args.connections, "of_them_slow_bodies": args.bodies,
                        "bound_s": args.timeout}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--bodies", type=int, default=20, help="how many of them trickle a body (the rest headers)")
    p.add_argument("--every", type=float, default=2.0, help="seconds between a slow client's bytes")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=10.0, help="the server's --timeout")
    p.add_argument("--nofile", type=int, default=256, help="the server's ulimit -n")
    p.add_argument("--name", default="slow_clients")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), "resnet9", 1, 28, width=16)
        proc, url = start_server(ckpt, args.timeout, args.nofile)
        try:
            png = png_bytes(np.random.default_rng(0), 28, 1)
            result = asyncio.run(drill(proc, url, png, args))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log = proc.stderr.read()
    result["server_log"] = {"lines": len(log.splitlines()), "tracebacks": log.count("Traceback"),
                            "status_500": len(re.findall(r"\b500\b", log)), "tail": log[-2000:]}
    result["http_5xx_total"] = result["attack"]["healthz"]["http_5xx"] + result["attack"]["predict"]["http_5xx"]
    path = write_result(args.name, {"cpu_lscpu": lscpu_model(), "setup": {
        "server": f"cnnkit serve resnet9 (width 16, 28x28) --timeout {args.timeout:g}, ulimit -n {args.nofile} "
                  f"(connection limit {args.nofile - 64})", "slow_connections": args.connections,
        "of_them_slow_bodies": args.bodies, "byte_every_s": args.every, "reopened_after_s": 1.0,
        "attack_seconds": args.seconds, "healthy_client": "GET /healthz every 0.1 s and POST predict every 0.25 s, "
                                                          "each on a new connection (aiohttp)"}, **result,
        "command": command_line("benchmarks.slow_clients")})
    print(path)
    for k in ("idle", "attack"):
        print(k, {q: result[k][q] for q in ("healthz", "predict")})
    print("sigterm", result["sigterm"], "5xx", result["http_5xx_total"], "log", {
        k: v for k, v in result["server_log"].items() if k != "tail"})


if __name__ == "__main__":
    main()
