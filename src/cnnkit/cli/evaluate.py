"""`cnnkit eval` and `cnnkit predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import err, machine_format, percent, print_rows, stdout, summary
from cnnkit.cli.options import (Adapt, AdaptAlpha, Amp, Artifact, DataDir, Device, IgnoreClassNames, Strict,
                                TentLr, Tta, check_early, check_out_folder)
from cnnkit.errors import ConfigError


def eval_(
    checkpoint: Artifact,
    data: Annotated[Optional[str], typer.Option(help="Dataset to evaluate on (default: the checkpoint's own, with "
                                                     "the test split it held out).")] = None,
    data_dir: DataDir = None,
    split: Annotated[str, typer.Option(help="train, val (the images the run held out for validation: choose "
                                            "settings there) or test; a corruption benchmark corrupts test or "
                                            "val.")] = "test",
    tta: Tta = False,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the JSON and confusion matrix (default: the "
                                                     "run).")] = None,
    device: Device = "auto",
    strict: Strict = False,
    ignore_class_names: IgnoreClassNames = False,
    amp: Amp = "off",
    adapt: Adapt = None,
    alpha: AdaptAlpha = None,
    tent_lr: TentLr = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch (what --adapt adapts to).")] = 512,
    images_per_cell: Annotated[Optional[int], typer.Option(min=1, help="Corruption benchmarks: evaluate this many "
                                                                       "images of each cell (stratified, "
                                                                       "seeded).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines (a corruption benchmark prints one per "
                                                        "corruption on stderr).")] = False,
) -> None:
    """Evaluate a checkpoint: top-1/top-5, per-class precision/recall/F1, ECE, confusion matrix; on a corruption
    benchmark (fashion-mnist-c, mnist-c, cifar10-c, sample-c) the error per corruption and severity."""
    check_out_folder(out)
    check_early(device=device, checkpoint=checkpoint, amp=amp)
    from cnnkit.evaluate.adapt import check_adapt

    check_adapt(adapt, alpha, tent_lr)
    from cnnkit.data.corruptions import parse_benchmark

    given = checkpoint.expanduser()  # a run or soup folder, else the file's folder: where its reports go
    out_dir = out or (given if given.is_dir() else given.parent)
    if data is not None and parse_benchmark(data) is not None:
        if split not in ("test", "val") or tta:
            raise ConfigError(f"{data.split(':')[0]} corrupts the test split (or, with --split val, the run's "
                              f"validation images): leave out --tta, and use --split test or val")
        _eval_corruptions(checkpoint, data, data_dir, out_dir, device, amp, adapt, alpha, tent_lr, batch_size,
                          images_per_cell, split, quiet)
        return
    if images_per_cell is not None:
        raise ConfigError("--images-per-cell applies to corruption benchmarks (e.g. --data fashion-mnist-c)")
    from cnnkit.evaluate import evaluate

    r = evaluate(checkpoint, data, split, data_dir=data_dir, tta=tta, device=device, out_dir=out_dir, strict=strict,
                 ignore_class_names=ignore_class_names, amp=amp, adapt=adapt, alpha=alpha, tent_lr=tent_lr,
                 batch_size=batch_size)
    m = r.metrics
    if m.get("per_class"):  # a classifier's precision, recall and F1 per class
        t = Table(title="per class", title_justify="left")
        for c in ("class", "precision", "recall", "F1", "support"):
            t.add_column(c, justify="left" if c == "class" else "right")
        for row in m["per_class"]:
            t.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
        stdout.print(t)
    shown = {k: percent(v) if k in ACCURACIES else v for k, v in r.summary.items()}
    summary("eval", {"checkpoint": m["checkpoint"], "data": m["data"], "split": m["split"], "images": m["images"],
                     "tta": "flip" if tta else "none", **({"adapt": _adapt_words(m["adapt"])} if adapt else {}),
                     **shown, "json": r.json_path, **r.figures})


ACCURACIES = ("top-1", "top-5")  # the task summaries' accuracies: shown as percent()


def _adapt_words(record: dict[str, Any]) -> str:
    extra = {"alpha-bn": f", alpha {record.get('alpha')}", "tent": f", lr {record.get('lr')}"}.get(record["method"], "")
    return f"{record['method']} (batch {record['batch_size']}{extra})"


def _eval_corruptions(checkpoint: Path, data: str, data_dir: Optional[Path], out_dir: Path, device: str, amp: str,
                      adapt: Optional[str], alpha: Optional[float], tent_lr: float, batch_size: int,
                      images_per_cell: Optional[int], split: str, quiet: bool) -> None:
    from cnnkit.data.corruptions import parse_benchmark
    from cnnkit.evaluate import evaluate_corruptions

    _, _, severities = parse_benchmark(data)
    where = "the run's validation images" if split == "val" else "the test split"

    def progress(name: str, errors: dict[int, float], done: int, total: int) -> None:
        if name == "start":  # minutes for a whole benchmark: what it does, then a line per corruption
            say(f"{data}: {total} corruption(s) × {len(severities)} severit{'y' if len(severities) == 1 else 'ies'} "
                f"of {done} images of {where} (cells made once, then cached)")
        elif name == "clean":
            say(f"clean: top-1 error {percent(errors[0])}")
        else:
            cells = ", ".join(f"{s}: {percent(e)}" for s, e in sorted(errors.items()))
            say(f"{name} ({done}/{total}): top-1 error by severity {cells}")

    r = evaluate_corruptions(checkpoint, data, data_dir=data_dir, batch_size=batch_size, device=device, amp=amp,
                             adapt=adapt, alpha=alpha, tent_lr=tent_lr, images_per_cell=images_per_cell,
                             out_dir=out_dir, split=split, progress=None if quiet else progress)
    severities = sorted({s for row in r.errors.values() for s in row})
    t = Table(title="top-1 error per corruption and severity", title_justify="left")
    t.add_column("corruption")
    for sev in severities:
        t.add_column(str(sev), justify="right")
    t.add_column("mean", justify="right")
    for corruption, row in r.errors.items():
        t.add_row(corruption, *(percent(row[sev]) if sev in row else "" for sev in severities),
                  percent(sum(row.values()) / len(row)))
    stdout.print(t)
    m = r.metrics
    summary("eval", {"checkpoint": m["checkpoint"], "data": data,
                     "split": "val (the run's validation images)" if split == "val" else "test",
                     "images per cell": images_per_cell or "all",
                     "adapt": _adapt_words(m["adapt"]) if adapt else "none",
                     "clean error": percent(r.clean_error),
                     "mean corruption error": percent(r.mean_corruption_error), "json": r.json_path})


def say(line: str) -> None:
    """A progress line on stderr (stdout keeps the results)."""
    err.print(line, markup=False, emoji=False, highlight=False, soft_wrap=True)


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Run directory (its best checkpoint), a soup folder (its "
                                                            "greedy soup), a .safetensors file or an exported "
                                                            "artifact (.onnx, .pt2, .ts).")] = None,
    url: Annotated[Optional[str], typer.Option(help="Ask a running `cnnkit serve` instead: "
                                                    "http://HOST:PORT/v1/models/NAME (token from "
                                                    "$CNNKIT_TOKEN).")] = None,
    topk: Annotated[int, typer.Option(min=1, help="How many classes to show per image.")] = 3,
    tta: Tta = False,
    device: Device = "auto",
    strict: Strict = False,
    amp: Amp = "off",
    adapt: Adapt = None,
    alpha: AdaptAlpha = None,
    tent_lr: TentLr = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch (what --adapt adapts to), in the order "
                                                        "given.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print the predictions as JSON instead of the table: "
                                                         "each image's full path and its top-k classes with their "
                                                         "probabilities as fractions in [0, 1].")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the predictions as CSV instead of the table: one row "
                                                       "per image and rank (full path, rank, class, index, "
                                                       "probability as a fraction).")] = False,
) -> None:
    """Top-k classes for image files of any size and mode (here, or by a running service with --url)."""
    fmt = machine_format(as_json, as_csv)
    if (checkpoint is None) == (url is None):
        raise ConfigError("give --checkpoint RUN (predict here) or --url http://HOST:PORT/v1/models/NAME "
                          "(ask a running cnnkit serve), one of the two")
    if url is not None:
        local = [o for o, given in (("--tta", tta), ("--strict", strict), ("--device", device != "auto"),
                                    ("--amp", amp != "off"), ("--adapt", adapt is not None)) if given]
        if local:
            raise ConfigError(f"{', '.join(local)} set how predictions run here; with --url the service decides "
                              f"(start it with the options you want), so leave them out")
        rows = _predict_remote(url, inputs, topk)
        source = {"service": url}
    else:
        check_early(device=device, amp=amp)
        from cnnkit.evaluate.adapt import check_adapt

        check_adapt(adapt, alpha, tent_lr)
        from cnnkit.evaluate import predict as predict_files

        preds = predict_files(checkpoint, inputs, topk=topk, tta=tta, device=device, strict=strict, amp=amp,
                              adapt=adapt, alpha=alpha, tent_lr=tent_lr, batch_size=batch_size)
        rows = [(p.path, p.answer, p.shown) for p in preds]
        source = {"checkpoint": checkpoint}
    if fmt is not None:  # full paths; a probability as the fraction it is
        if fmt == "json":
            print_rows([{"image": str(Path(f).absolute()), "top": answer} for f, answer, _ in rows], fmt)
        else:
            print_rows([{"image": str(Path(f).absolute()), "rank": k + 1, **a}
                        for f, answer, _ in rows for k, a in enumerate(answer)], fmt)
        return
    t = Table(title="predictions", title_justify="left")
    t.add_column("image", overflow="fold")
    for i in range(max(len(answer) for _, answer, _ in rows)):
        t.add_column(f"#{i + 1}")
    for f, answer, shown in rows:
        t.add_row(str(f), *_cells(answer, shown))
    stdout.print(t)
    summary("predict", {"images": len(rows), **source})


def _cells(answer: list[dict[str, Any]], shown: list[str]) -> list[str]:
    """An image's answers as the table shows them: a class and its probability in percent; another task's
    answers in its own format."""
    if answer and all("class" in a and "probability" in a for a in answer):
        return [f"{a['class']} {percent(a['probability'])}" for a in answer]
    return shown


def _predict_remote(url: str, inputs: list[Path], topk: int) -> list[tuple[Path, list[dict[str, Any]], list[str]]]:
    """Predictions of a running service for image files (folders expanded), in requests of up to 32 images:
    (file, the service's answers, as a line shows them)."""
    from cnnkit.data.images import list_image_files
    from cnnkit.serve.client import Client

    files = list_image_files(list(inputs))
    rows = []
    with Client(url) as client:
        for i in range(0, len(files), 32):
            part = files[i:i + 32]
            for f, p in zip(part, client.predict(part, topk)):
                top = list(p["top"])
                rows.append((Path(f), top, [" ".join(str(v) for v in a.values()) for a in top]))
    return rows
