"""The restoration papers' claims, measured on the bundled test photographs under a 10-minute CPU budget each.

    python -m benchmarks.restore_claims train --seeds 0            # every arm: cnnkit train, then cnnkit eval
    python -m benchmarks.restore_claims speed --pairs 6            # ESPCN against SRCNN: cnnkit bench
    python -m benchmarks.restore_claims claims                     # the claims again, from the runs kept

`train`: each arm is one `cnnkit train --data photographs --budget 600s` (its default `--amp auto`: bf16 autocast
where the CPU computes it natively and it measures faster; each arm's `-fp32` twin adds `--amp off`) (the
restoration recipe: AdamW at lr 1e-3, batch 16, cosine without warm-up; validation on 512 held-out patches of the
training photographs; the best checkpoint kept by validation PSNR), then one `cnnkit eval --split test` (the five test photographs, read once)
and, for the denoisers, one `cnnkit eval --split val`, on which the Gaussian filter's σ is chosen. Arms:

- srcnn, espcn: ×3 on the luma Y alone (`--channels 1`: both papers train and score on Y; a colour photograph's
  chroma is enlarged by bicubic interpolation), SRCNN 9-1-5; edsr: EDSR baseline ×3 on RGB (as its paper); all
  on 96-pixel patches (32 small pixels);
- dncnn: DnCNN-S at σ 25 on 40-pixel patches (the paper's); dncnn-plain: the same without residual learning;
  dncnn-blind: DnCNN-B (20 layers) on σ drawn from 0 to 55.

Claims read (the issue's targets): SRCNN − bicubic ≥ 1 dB, EDSR − SRCNN ≥ 0.5 dB, ESPCN ≥ SRCNN (PSNR on Y,
border 3, as the super-resolution papers score), DnCNN − the best Gaussian filter (σ chosen on validation) ≥ 3 dB
(PSNR on RGB, as colour denoising is scored: noise added to each channel is partly averaged away in Y, which
flatters the filters); residual learning helps DnCNN; the
blind denoiser holds across σ 15, 25, 50 where the σ-25 one does not (both evaluated on the test photographs at
each σ, noise from the evaluation's fixed seed). Each difference is given per test photograph with a paired
bootstrap interval over the photographs (5 of them: it measures which photographs were drawn, not training
noise), and with a t interval over seeds when there are several.

`speed`: `cnnkit bench` of the SRCNN and ESPCN runs on a 160×240 input (a 480×720 output), each in a fresh
process, the two alternated, `--pairs` pairs; the median paired ratio of batch-1 latencies (SRCNN / ESPCN: how
many times more images per second ESPCN restores) with its interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.common import command_line, paired_ratio, t_interval, write_result

ARMS = {  # name: (model, model options, other train options)
    "srcnn": ("srcnn", ["scale=3"], ["--channels", "1"]),
    "espcn": ("espcn", ["scale=3"], ["--channels", "1"]),
    "edsr": ("edsr", ["scale=3"], []),
    "dncnn": ("dncnn", ["noise=25"], ["--img-size", "40"]),
    "dncnn-plain": ("dncnn", ["noise=25", "residual=false"], ["--img-size", "40"]),
    "dncnn-blind": ("dncnn", ["noise=[0,55]", "depth=20"], ["--img-size", "40"]),
}
ARMS.update({f"{k}-fp32": (m, o, [*e, "--amp", "off"]) for k, (m, o, e) in list(ARMS.items())})
SIGMAS = (15, 25, 50)  # the noise levels the denoisers are compared at (blind against fixed)


def _eval(out: Path, split: str) -> dict:
    before = set(out.glob("eval-*.json"))
    subprocess.run(["cnnkit", "eval", "--checkpoint", str(out), "--split", split], check=True, capture_output=True)
    return json.loads(sorted(set(out.glob("eval-*.json")) - before)[-1].read_text())


def _across_sigmas(out: Path) -> dict:
    """The denoiser's and the noisy input's PSNR (RGB) on the test photographs at each σ of SIGMAS."""
    import torch

    from cnnkit.artifacts import load
    from cnnkit.data import load_dataset
    from cnnkit.evaluate.restore import evaluate_restoration
    from cnnkit.tasks.restore import restoration_net

    ckpt = load(out, torch.device("cpu"))
    test = load_dataset("photographs", "test")
    net = restoration_net(ckpt.model)
    rows = {}
    for s in SIGMAS:
        net.noise = (float(s), float(s))
        r = evaluate_restoration(ckpt.model, test.images, test.sizes, torch.device("cpu"), None)
        rows[str(s)] = {"psnr_rgb": r["psnr_rgb"], "noisy input": r["baselines"]["noisy input"]["psnr_rgb"]}
    return rows


def run_arm(root: Path, name: str, seed: int, budget: int) -> dict:
    model, options, extra = ARMS[name]
    out = root / f"{name}-seed{seed}"
    train = ["cnnkit", "train", "--data", "photographs", "--model", model, "--budget", f"{budget}s",
             "--seed", str(seed), "--out", str(out), "--overwrite", "--quiet", *extra]
    for o in options:
        train += ["--model-kw", o]
    started = time.perf_counter()
    subprocess.run(train, check=True)
    seconds = time.perf_counter() - started
    record = {"arm": name, "seed": seed, "train_command": " ".join(train), "train_seconds": seconds,
              "test": _eval(out, "test")}
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    notes = next((v for v in config.values() if isinstance(v, dict) and "budget_plan" in v), {})
    record["run"] = {"max_steps": config.get("max_steps"), "precision": notes.get("precision"),
                     "budget_plan": notes.get("budget_plan")}
    record["epochs"] = sum(1 for _ in (out / "metrics.csv").open()) - 1
    if model == "dncnn":
        record["val"] = _eval(out, "val")
        record["across_sigma"] = _across_sigmas(out)
    return record


def bootstrap(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of a − b over the test photographs with a percentile bootstrap interval (photographs resampled)."""
    d = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(resamples)]
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"difference_db": float(d.mean()), "interval_db": [float(lo), float(hi)],
            "per_photograph_db": [round(float(v), 3) for v in d]}


def _metric(record: dict) -> str:
    """PSNR on Y for super-resolution, on RGB for denoising (see the module's docstring)."""
    return "psnr_rgb" if record["arm"].startswith("dncnn") else "psnr_y"


def _network(record: dict) -> list[float]:
    return [r[_metric(record)] for r in record["test"]["per_image"]]


def _baseline(record: dict, name: str) -> list[float]:
    return [r[_metric(record)] for r in record["test"]["baselines_per_image"][name]]


def claims(runs: list[dict]) -> dict:
    """Each claim's difference per seed (with its bootstrap over photographs) and over seeds."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out: dict = {}

    def claim(key: str, target: float | None, pairs) -> None:  # noqa: ANN001
        per_seed = {}
        for s in seeds:
            got = pairs(s)
            if got is not None:
                per_seed[str(s)] = bootstrap(*got)
        if per_seed:
            values = [v["difference_db"] for v in per_seed.values()]
            out[key] = {"target_db": target, "per_seed": per_seed,
                        **({"over_seeds": t_interval(values)} if len(values) > 1 else {}),
                        "met_every_seed": None if target is None else all(v >= target for v in values)}

    def arms(a: str, b: str):  # noqa: ANN202
        return lambda s: (_network(by[(a, s)]), _network(by[(b, s)])) if (a, s) in by and (b, s) in by else None

    def versus(arm: str, baseline: str):  # noqa: ANN202
        return lambda s: (_network(by[(arm, s)]), _baseline(by[(arm, s)], baseline)) if (arm, s) in by else None

    def versus_filter(arm: str):  # noqa: ANN202
        def pairs(s: int):  # noqa: ANN202
            if (arm, s) not in by:
                return None
            r = by[(arm, s)]
            filters = {k: v for k, v in r["val"]["baselines"].items() if k.startswith("gaussian filter")}
            chosen = max(filters, key=lambda k: filters[k][_metric(r)])
            r["filter_chosen_on_val"] = chosen
            return _network(r), _baseline(r, chosen)
        return pairs

    for suffix in ("", "-fp32"):  # each precision's arms against the same precision's
        tag = suffix.replace("-", "_")
        claim(f"srcnn_minus_bicubic{tag}", 1.0, versus(f"srcnn{suffix}", "bicubic"))
        claim(f"edsr_minus_srcnn{tag}", 0.5, arms(f"edsr{suffix}", f"srcnn{suffix}"))
        claim(f"espcn_minus_srcnn{tag}", 0.0, arms(f"espcn{suffix}", f"srcnn{suffix}"))
        claim(f"dncnn_residual_minus_plain{tag}", None, arms(f"dncnn{suffix}", f"dncnn-plain{suffix}"))
        claim(f"dncnn_minus_best_gaussian_filter{tag}", 3.0, versus_filter(f"dncnn{suffix}"))
    return out


def recompute(args: argparse.Namespace) -> None:
    """The claims of the runs in the results file computed again (after the arms or the claims changed)."""
    result = json.loads(Path(args.results).read_text())
    args.budget, args.note = result["budget_s"], result.get("note")
    _write(args, result["runs"])


def train(args: argparse.Namespace) -> None:
    root = Path(args.out)
    path = Path(args.results)
    runs = json.loads(path.read_text())["runs"] if args.resume and path.exists() else []
    done = {(r["arm"], r["seed"]) for r in runs}
    for seed in args.seeds:
        order = args.only if seed % 2 == 0 else args.only[::-1]
        for name in order:
            if (name, seed) in done:
                continue
            runs.append(run_arm(root, name, seed, args.budget))
            t = runs[-1]["test"]
            key = _metric(runs[-1])
            print(name, seed, key, round(t[key], 3), {k: round(v[key], 3) for k, v in t["baselines"].items()},
                  flush=True)
            _write(args, runs)
    _write(args, runs)


def _write(args: argparse.Namespace, runs: list[dict]) -> None:
    summary = claims(runs)
    payload = {"command": command_line("benchmarks.restore_claims"), "budget_s": args.budget, "runs": runs,
               "claims": summary, "note": args.note}
    write_result("restore_claims", payload)


def speed(args: argparse.Namespace) -> None:
    root = Path(args.out)
    runs = {name: root / f"{name}-seed0" for name in ("srcnn", "espcn")}
    rows: dict[str, list[dict]] = {"srcnn": [], "espcn": []}
    for i in range(args.pairs):
        for name in (("srcnn", "espcn") if i % 2 == 0 else ("espcn", "srcnn")):
            cmd = ["cnnkit", "bench", str(runs[name]), "--img-size", args.img_size, "--repeats", str(args.repeats),
                   "--batch", "8", "--json"]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows[name].append(json.loads(done.stdout)[0])
    ratios = [s["latency_ms_p50"] / e["latency_ms_p50"] for s, e in zip(rows["srcnn"], rows["espcn"])]
    payload = {"command": command_line("benchmarks.restore_claims"), "input": args.img_size,
               "srcnn_over_espcn_latency": paired_ratio(ratios), "target": 10.0,
               "srcnn": rows["srcnn"], "espcn": rows["espcn"], "note": args.note}
    print(json.dumps(payload["srcnn_over_espcn_latency"]))
    write_result("restore_speed", payload)


def table(args: argparse.Namespace) -> None:
    """The results as the Restore page's Markdown table: each arm's test PSNR and its baseline's, then each claim."""
    result = json.loads(Path(args.results).read_text())
    lines = ["| arm | trained (steps, precision) | test PSNR, dB | baseline, dB |", "| --- | --- | --- | --- |"]
    for r in result["runs"]:
        key = _metric(r)
        t = r["test"]
        base = {k: v[key] for k, v in t["baselines"].items()}
        best = max(base, key=base.get)
        shown = f"{best} {base[best]:.2f}" + (" (best on test; the claim's is chosen on validation)"
                                              if best.startswith("gaussian") else "")
        run = r.get("run", {})
        lines.append(f"| {r['arm']} (seed {r['seed']}) | {run.get('max_steps')} steps, {run.get('precision')} | "
                     f"{t[key]:.2f} ({key.replace('psnr_', '').upper()}) | {shown} |")
    lines += ["", "| claim | target | measured (seed 0), dB | 95% bootstrap interval over the photographs | met |",
              "| --- | --- | --- | --- | --- |"]
    for name, c in result["claims"].items():
        for seed, v in c["per_seed"].items():
            lo, hi = v["interval_db"]
            met = "–" if c["target_db"] is None else ("yes" if v["difference_db"] >= c["target_db"] else "no")
            target = "–" if c["target_db"] is None else f"≥ {c['target_db']:+.1f} dB"
            lines.append(f"| {name} | {target} | {v['difference_db']:+.2f} | {lo:+.2f} to {hi:+.2f} | {met} |")
    sigmas = [r for r in result["runs"] if "across_sigma" in r]
    if sigmas:
        lines += ["", "| denoiser | " + " | ".join(f"σ {s}: PSNR (RGB), dB" for s in SIGMAS) + " |",
                  "| --- |" + " --- |" * len(SIGMAS)]
        noisy = sigmas[0]["across_sigma"]
        lines.append("| noisy input | " + " | ".join(f"{noisy[str(s)]['noisy input']:.2f}" for s in SIGMAS) + " |")
        for r in sigmas:
            lines.append(f"| {r['arm']} | " + " | ".join(f"{r['across_sigma'][str(s)]['psnr_rgb']:.2f}"
                                                       for s in SIGMAS) + " |")
    speed_file = Path(args.results).with_name("restore_speed.json")
    if speed_file.exists():
        sp = json.loads(speed_file.read_text())
        ratio = sp["srcnn_over_espcn_latency"]
        lo, hi = ratio["interval"]
        ms = {k: statistics.median(r["latency_ms_p50"] for r in sp[k]) for k in ("srcnn", "espcn")}
        lines += ["", f"ESPCN against SRCNN at a {sp['input']} input: SRCNN {ms['srcnn']:.1f} ms, ESPCN "
                      f"{ms['espcn']:.1f} ms per image at batch 1 (medians); ESPCN restores **{ratio['median']:.1f}×** "
                      f"as many images per second ({ratio['pairs']} pairs of fresh processes, interval {lo:.1f}× to "
                      f"{hi:.1f}×; target ≥ {sp['target']:.0f}×)."]
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--budget", type=int, default=600)
    t.add_argument("--only", nargs="+", choices=list(ARMS), default=[a for a in ARMS if not a.endswith("-fp32")])
    t.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    t.add_argument("--results", default="benchmarks/results/restore_claims.json")
    for p in (t, sub.add_parser("speed")):
        p.add_argument("--out", default="/tmp/cnnkit-bench-restore")
        p.add_argument("--note")
    sub.add_parser("table").add_argument("--results", default="benchmarks/results/restore_claims.json")
    sub.add_parser("claims").add_argument("--results", default="benchmarks/results/restore_claims.json")
    s = sub.choices["speed"]
    s.add_argument("--pairs", type=int, default=6)
    s.add_argument("--repeats", type=int, default=20)
    s.add_argument("--img-size", default="160x240")
    args = ap.parse_args()
    {"train": train, "speed": speed, "table": table, "claims": recompute}[args.what](args)


if __name__ == "__main__":
    main()
