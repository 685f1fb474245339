"""Knowledge distillation on full Fashion-MNIST: a small student (ResNet-20, 0.27 M parameters) trained alone,
with Hinton's KD from a teacher ensemble, and with MEAL V2 (the ensemble's soft outputs only, no labels, plus a
discriminator), all for the same number of epochs with the same recipe (the ResNet family's in cnnkit).

Teachers: two ResNet-9 (width 16) trained with cnnkit's fast recipe, seeds 0 and 1 (or `--teacher RUN ...`).
Everything is scored on the 10,000 test images, which no run saw.

    python -m benchmarks.distill   # writes benchmarks/results/distill.json and .md (about 10 minutes on 2 cores
                                   # with teachers given, 25 without)

`--setting finetune` is MEAL V2's own setting: the student starts from a pretrained checkpoint (here the student
trained alone for `--epochs`), then each of alone (labels), kd and meal-v2 continues it for `--finetune-epochs`
at `--finetune-lr` (a tenth of the family's 0.1 by default), so all three start from the same weights.

    python -m benchmarks.distill --setting finetune --teacher T0 --teacher T1   # distill_finetune.json

`--seeds 0 1 2 3 4` trains the teachers once and every student once per seed, and writes `distill_seeds.json`
(`distill_finetune_seeds.json`): each seed's accuracies and, for each pair of students, the mean paired
difference over the seeds with a Student-t 95% interval ("no measurable difference" where it holds 0).
`--keep-teachers DIR` keeps the teachers it trains in DIR, for a later `--teacher DIR/teacher0 ...`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, SHARED_DATA, command_line, machine, t_interval, write_result

PAPERS = ("Hinton, Vinyals and Dean (2015): on MNIST a distilled small net made 74 test errors against 146 "
          "trained alone (the large teacher net: 67); Shen and Savvides (2020, MEAL V2): a plain "
          "ResNet-50 trained only on an ensemble's soft labels with a discriminator reaches 80.67% ImageNet top-1, "
          "against about 76.1% for the standard ResNet-50 trained on the labels.")


NAMES = ("alone (labels)", "kd (T 4, α 0.9)", "meal-v2 (no labels)")


def paired_differences(runs: list[dict[str, float]]) -> dict:
    """Per pair of students, the mean over runs (each run: its students' test accuracies, same seed and
    teachers) of the paired difference in points, with a t-interval and a verdict."""
    out = {}
    for a, b in ((NAMES[1], NAMES[0]), (NAMES[2], NAMES[0]), (NAMES[2], NAMES[1])):
        t_ = t_interval([100 * (r[a] - r[b]) for r in runs])
        t_["verdict"] = ("no measurable difference" if t_["holds_zero"]
                         else f"{a.split()[0]} {'ahead' if t_['mean'] > 0 else 'behind'}")
        out[f"{a.split()[0]} - {b.split()[0]}"] = t_
    return out


def summarize(files: list[str]) -> None:
    """Every (file, student seed) of the given results as one paired run; differences over all of them."""
    runs, settings = [], set()
    for f in files:
        path = Path(f) if Path(f).exists() else RESULTS / f
        d = json.loads(path.read_text())
        settings.add(d.get("setting", "scratch"))
        teachers = [r["test_acc"] for r in d["rows"] if r["model"].startswith("teacher")]
        for seed in d.get("student_seeds", [d.get("student_seed", 0)]):
            acc = {r["model"].split(": ", 1)[-1]: r["test_acc"] for r in d["rows"]
                   if r["model"].startswith("student") and r.get("seed", seed) == seed}
            runs.append({"file": path.name, "seed": seed, "teachers_test_acc": teachers,
                         "bf16_native": d["machine"]["bf16_native"], "amp": d["rows"][-1]["config"]["amp"], **acc})
    if len(settings) != 1:
        raise SystemExit(f"these files mix settings ({', '.join(sorted(settings))}): summarize one setting at a time")
    setting = settings.pop()
    name = "distill" + ("_finetune" if setting == "finetune" else "") + "_summary"
    payload = {"setting": setting, "files": files, "runs": runs, "differences_points": paired_differences(runs),
               "mean_test_acc": {n: statistics.fmean(r[n] for r in runs) for n in NAMES},
               "command": command_line("benchmarks.distill")}
    write_result(name, payload)
    lines = [f"Distillation ({setting}): {len(runs)} paired runs (test accuracy %, 10,000 test images).", "",
             "| file | seed | teachers | bf16 | " + " | ".join(NAMES) + " |", "| --- | ---: | --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['file']} | {r['seed']} | {' / '.join(f'{100 * t:.2f}' for t in r['teachers_test_acc'])} | "
              f"{'native' if r['bf16_native'] else 'none (fp32)'} | " + " | ".join(f"{100 * r[n]:.2f}" for n in NAMES)
              + " |" for r in runs]
    lines += ["", f"| difference (points, {len(runs)} paired runs) | mean | 95% interval | verdict |",
              "| --- | ---: | --- | --- |"]
    lines += [f"| {k} | {v['mean']:+.2f} | {v['interval'][0]:+.2f} to {v['interval'][1]:+.2f} | {v['verdict']} |"
              for k, v in payload["differences_points"].items()]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--teacher", action="append", default=None, help="use these trained runs as the teachers")
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="student epochs, the same for every student")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--seed", type=int, default=0, help="the students' seed (results of a seed other than 0 go to "
                                                        "distill_seedN.json)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="several student seeds, teachers trained once: writes distill_seeds.json with paired "
                         "differences and t-intervals")
    ap.add_argument("--keep-teachers", default=None, help="train the teachers into this folder and keep them")
    ap.add_argument("--summarize", nargs="+", metavar="RESULT", default=None,
                    help="train nothing: gather these result files (e.g. distill.json distill_seed1.json ...) into "
                         "distill[_finetune]_summary.json, paired differences over every student seed in them")
    ap.add_argument("--setting", choices=("scratch", "finetune"), default="scratch",
                    help="scratch: every student from random init; finetune: from the student trained alone")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--quick", action="store_true", help="smoke run on the bundled sample")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    from cnnkit.artifacts import read_meta
    from cnnkit.artifacts.checkpoint import resolve_checkpoint
    from cnnkit.evaluate import evaluate
    from cnnkit.train import fit

    data = "sample" if args.quick else "fashion-mnist"
    common = dict(data=data, data_dir=args.data_dir, progress=False)
    if args.quick:
        common["train_images"] = 1000
    seeds = args.seeds if args.seeds is not None else [args.seed]
    work = Path(tempfile.mkdtemp(prefix="cnnkit-distill-"))
    rows = []

    def score(name, run_dir, seconds, **extra):
        r = evaluate(run_dir, data, "test", data_dir=args.data_dir, device="cpu")
        rows.append({"model": name, "test_acc": r.metrics["top1"], "seconds": seconds, **extra})
        print(json.dumps(rows[-1]), flush=True)

    try:
        teachers = args.teacher or []
        for path in teachers:
            score(f"teacher: {Path(path).name}", path, None)
        if not teachers:
            home = Path(args.keep_teachers) if args.keep_teachers else work
            for seed in (0, 1):
                t = time.perf_counter()
                run = fit(model="resnet9", model_kwargs={"width": 16}, epochs=1 if args.quick else args.teacher_epochs,
                          seed=seed, out=str(home / f"teacher{seed}"), **common)
                teachers.append(str(run.run_dir))
                score(f"teacher: resnet9 width 16, seed {seed}", run.run_dir, time.perf_counter() - t)
        described = [{k: read_meta(resolve_checkpoint(t))["config"][k]
                      for k in ("model", "model_kwargs", "epochs", "seed", "amp")} for t in teachers]
        per_seed = {}
        for seed in seeds:
            first = len(rows)
            epochs = 1 if args.quick else args.epochs
            students = [("alone (labels)", {}), ("kd (T 4, α 0.9)", {"distill": "kd", "teachers": teachers}),
                        ("meal-v2 (no labels)", {"distill": "meal-v2", "teachers": teachers})]
            if args.setting == "finetune":
                t = time.perf_counter()
                base = fit(model=args.student, epochs=epochs, seed=seed, out=str(work / f"base{seed}"), **common)
                score(f"base {args.student}: alone (labels), {epochs} epochs", base.run_dir, time.perf_counter() - t,
                      seed=seed)
                start = str(resolve_checkpoint(base.run_dir))
                epochs = 1 if args.quick else args.finetune_epochs
                for _, extra in students:
                    extra.update(init_from=start, lr=args.finetune_lr)
            for label, extra in students:
                t = time.perf_counter()
                run = fit(model=args.student, epochs=epochs, seed=seed, out=str(work / f"{label.split()[0]}{seed}"),
                          **extra, **common)
                score(f"student {args.student}: {label}", run.run_dir, time.perf_counter() - t, seed=seed,
                      config={k: run.config.to_dict()[k] for k in ("optimizer", "lr", "batch_size", "epochs",
                                                                    "label_smoothing", "amp")})
            per_seed[seed] = {r["model"].split(": ", 1)[-1]: r["test_acc"] for r in rows[first:]
                              if r["model"].startswith("student")}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    alone, kd, meal = (statistics.fmean(per_seed[s][n] for s in seeds) for n in NAMES)
    checks = {"distilled student beats the student trained alone": max(kd, meal) > alone,
              "kd beats alone": kd > alone, "meal-v2 beats alone": meal > alone,
              "meal-v2 without labels is at least as good as kd with them": meal >= kd}
    differences = paired_differences(list(per_seed.values())) if len(seeds) > 1 else {}
    if differences:
        checks = {k: None for k in checks}  # the differences, with their intervals, answer these
    payload = {"machine": machine(), "data": data, "setting": args.setting, "student_epochs": epochs,
               "student_seeds": seeds, "student_seed": seeds[0],
               **({"base_epochs": args.epochs, "finetune_lr": args.finetune_lr} if args.setting == "finetune" else {}),
               "teachers": described,
               "rows": rows, "mean_test_acc": {"alone": alone, "kd": kd, "meal-v2": meal},
               "differences_points": differences, "checks": checks, "papers": PAPERS, "quick": args.quick,
               "command": command_line("benchmarks.distill")}
    name = ("distill_quick" if args.quick else "distill") + ("_finetune" if args.setting == "finetune" else "") \
        + ("_seeds" if len(seeds) > 1 else f"_seed{seeds[0]}" if seeds[0] else "")
    write_result(name, payload)
    how = (f"students start from the base trained alone and continue {epochs} epochs each at lr {args.finetune_lr}"
           if args.setting == "finetune" else f"students {epochs} epochs each from random init")
    lines = [f"Knowledge distillation on {data}: test accuracy (10,000 test images), {how}, "
             f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}.",
             "", "| model | seed | test acc (%) | seconds |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r.get('seed', '')} | {100 * r['test_acc']:.2f} | "
              f"{'' if r['seconds'] is None else format(r['seconds'], '.0f')} |" for r in rows]
    if differences:
        lines += ["", f"| difference (points, mean of {len(seeds)} paired seeds) | mean | 95% interval | verdict |",
                  "| --- | ---: | --- | --- |"]
        lines += [f"| {k} | {v['mean']:+.2f} | {v['interval'][0]:+.2f} to {v['interval'][1]:+.2f} | {v['verdict']} |"
                  for k, v in differences.items()]
    else:
        lines += ["", "| check | met |", "| --- | --- |"] + [f"| {k} | {'yes' if v else 'no'} |"
                                                            for k, v in checks.items()]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
