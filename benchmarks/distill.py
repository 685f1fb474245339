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
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, SHARED_DATA, command_line, machine, write_result

PAPERS = ("Hinton, Vinyals and Dean (2015): on MNIST a distilled small net made 74 test errors against 146 "
          "trained alone (the large teacher net: 67); Shen and Savvides (2020, MEAL V2): a plain "
          "ResNet-50 trained only on an ensemble's soft labels with a discriminator reaches 80.67% ImageNet top-1, "
          "against about 76.1% for the standard ResNet-50 trained on the labels.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--teacher", action="append", default=None, help="use these trained runs as the teachers")
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="student epochs, the same for every student")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--seed", type=int, default=0, help="the students' seed (results of a seed other than 0 go to "
                                                        "distill_seedN.json)")
    ap.add_argument("--setting", choices=("scratch", "finetune"), default="scratch",
                    help="scratch: every student from random init; finetune: from the student trained alone")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--quick", action="store_true", help="smoke run on the bundled sample")
    args = ap.parse_args()
    from cnnkit.evaluate import evaluate
    from cnnkit.train import fit

    data = "sample" if args.quick else "fashion-mnist"
    common = dict(data=data, data_dir=args.data_dir, progress=False)
    if args.quick:
        common["train_images"] = 1000
    work = Path(tempfile.mkdtemp(prefix="cnnkit-distill-"))
    rows = []

    def score(name, run_dir, seconds, **extra):
        r = evaluate(run_dir, data, "test", data_dir=args.data_dir, device="cpu")
        rows.append({"model": name, "test_acc": r.metrics["top1"], "seconds": seconds, **extra})
        print(json.dumps(rows[-1]), flush=True)

    try:
        from cnnkit.artifacts.checkpoint import resolve_checkpoint

        teachers = args.teacher or []
        for path in teachers:
            score(f"teacher: {Path(path).name}", path, None)
        if not teachers:
            for seed in (0, 1):
                t = time.perf_counter()
                run = fit(model="resnet9", model_kwargs={"width": 16}, epochs=1 if args.quick else args.teacher_epochs,
                          seed=seed, out=str(work / f"teacher{seed}"), **common)
                teachers.append(str(run.run_dir))
                score(f"teacher: resnet9 width 16, seed {seed}", run.run_dir, time.perf_counter() - t)
        epochs = 1 if args.quick else args.epochs
        students = [("alone (labels)", {}), ("kd (T 4, α 0.9)", {"distill": "kd", "teachers": teachers}),
                    ("meal-v2 (no labels)", {"distill": "meal-v2", "teachers": teachers})]
        if args.setting == "finetune":
            t = time.perf_counter()
            base = fit(model=args.student, epochs=epochs, seed=args.seed, out=str(work / "base"), **common)
            score(f"base {args.student}: alone (labels), {epochs} epochs", base.run_dir, time.perf_counter() - t)
            start = str(resolve_checkpoint(base.run_dir))
            epochs = 1 if args.quick else args.finetune_epochs
            for _, extra in students:
                extra.update(init_from=start, lr=args.finetune_lr)
        for label, extra in students:
            t = time.perf_counter()
            run = fit(model=args.student, epochs=epochs, seed=args.seed, out=str(work / label.split()[0]), **extra,
                      **common)
            score(f"student {args.student}: {label}", run.run_dir, time.perf_counter() - t,
                  config={k: run.config.to_dict()[k] for k in ("optimizer", "lr", "batch_size", "epochs",
                                                                "label_smoothing", "amp")})
        from cnnkit.artifacts import read_meta
        from cnnkit.artifacts.checkpoint import resolve_checkpoint

        described = [{k: read_meta(resolve_checkpoint(t))["config"][k]
                      for k in ("model", "model_kwargs", "epochs", "seed", "amp")} for t in teachers]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    acc = {r["model"].split(": ", 1)[-1]: r["test_acc"] for r in rows if r["model"].startswith("student")}
    alone, kd, meal = acc["alone (labels)"], acc["kd (T 4, α 0.9)"], acc["meal-v2 (no labels)"]
    checks = {"distilled student beats the student trained alone": max(kd, meal) > alone,
              "kd beats alone": kd > alone, "meal-v2 beats alone": meal > alone,
              "meal-v2 without labels is at least as good as kd with them": meal >= kd}
    payload = {"machine": machine(), "data": data, "setting": args.setting, "student_epochs": epochs,
               "student_seed": args.seed,
               **({"base_epochs": args.epochs, "finetune_lr": args.finetune_lr} if args.setting == "finetune" else {}),
               "teachers": described,
               "rows": rows, "checks": checks, "papers": PAPERS, "quick": args.quick,
               "command": command_line("benchmarks.distill")}
    name = ("distill_quick" if args.quick else "distill") + ("_finetune" if args.setting == "finetune" else "") \
        + (f"_seed{args.seed}" if args.seed else "")
    write_result(name, payload)
    how = (f"students start from the base trained alone and continue {epochs} epochs each at lr {args.finetune_lr}"
           if args.setting == "finetune" else f"students {epochs} epochs each from random init")
    lines = [f"Knowledge distillation on {data}: test accuracy (10,000 test images), {how}.",
             "", "| model | test acc (%) | seconds |", "| --- | ---: | ---: |"]
    lines += [f"| {r['model']} | {100 * r['test_acc']:.2f} | "
              f"{'' if r['seconds'] is None else format(r['seconds'], '.0f')} |" for r in rows]
    lines += ["", "| check | met |", "| --- | --- |"] + [f"| {k} | {'yes' if v else 'no'} |" for k, v in checks.items()]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
