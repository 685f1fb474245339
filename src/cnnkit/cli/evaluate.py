"""`cnnkit eval` and `cnnkit predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import err, machine_format, percent, print_rows, stdout, summary
from cnnkit.cli.options import (Adapt, AdaptAlpha, Amp, Artifact, DataDir, Device, DropBadBoxes, IgnoreClassNames,
                                NmsIou, ScoreThreshold, Strict, TentLr, Tta, check_early, check_out_folder)
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
    drop_bad_boxes: DropBadBoxes = False,
    ignore_class_names: IgnoreClassNames = False,
    amp: Amp = "off",
    adapt: Adapt = None,
    alpha: AdaptAlpha = None,
    tent_lr: TentLr = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch (what --adapt adapts to).")] = 512,
    scales: Annotated[Optional[str], typer.Option(help="Segmentation: also run the model at these input scales "
                                                       "and average (e.g. 0.75,1,1.25).")] = None,
    window: Annotated[bool, typer.Option("--window", help="Segmentation: run images larger than the training "
                                                          "size in overlapping tiles of that size (default: "
                                                          "whole).")] = False,
    images_per_cell: Annotated[Optional[int], typer.Option(min=1, help="Corruption benchmarks: evaluate this many "
                                                                       "images of each cell (stratified, "
                                                                       "seeded).")] = None,
    images: Annotated[Optional[int], typer.Option(min=1, help="Score a stratified, seeded subset of this many "
                                                              "images of the split (a quick look; the JSON says "
                                                              "so).")] = None,
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
        if scales is not None or window:
            raise ConfigError("--scales and --window are for segmentation data; corruption benchmarks are classifiers'")
        if split not in ("test", "val") or tta:
            raise ConfigError(f"{data.split(':')[0]} corrupts the test split (or, with --split val, the run's "
                              f"validation images): leave out --tta, and use --split test or val")
        if images is not None:
            raise ConfigError("--images is for one test set; a corruption benchmark takes --images-per-cell")
        _eval_corruptions(checkpoint, data, data_dir, out_dir, device, amp, adapt, alpha, tent_lr, batch_size,
                          images_per_cell, split, quiet)
        return
    if images_per_cell is not None:
        raise ConfigError("--images-per-cell applies to corruption benchmarks (e.g. --data fashion-mnist-c)")
    from cnnkit.evaluate import evaluate

    r = evaluate(checkpoint, data, split, data_dir=data_dir, tta=tta, device=device, out_dir=out_dir, strict=strict,
                 scales=parse_scales(scales), window=window,
                 ignore_class_names=ignore_class_names, amp=amp, adapt=adapt, alpha=alpha, tent_lr=tent_lr,
                 batch_size=batch_size, images=images, drop_bad_boxes=drop_bad_boxes)
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
    summary("eval", {"checkpoint": m["checkpoint"], "data": m["data"], "split": m["split"],
                     "images": m["images"] if "subset" not in m else m["subset"],
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


ImagesOut = Annotated[Optional[Path], typer.Option(help="Restoration models: write each restored image (<stem>.png, "
                                                         "`scale` times the image's size) and restored.json into "
                                                         "this folder.")]
Tile = Annotated[Optional[int], typer.Option(help="Restoration models: restore in tiles of this many input pixels a "
                                                  "side (default 512; 0: the whole image at once), each run with a "
                                                  "margin of the network's receptive field, so that the result "
                                                  "equals the whole image's.")]
Compare = Annotated[bool, typer.Option("--compare", help="Restoration models, with --images-out: also write "
                                                         "<stem>-compare.png, a central crop of the plain bicubic "
                                                         "enlargement (or the noisy input) beside the restored one.")]


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Run directory (its best checkpoint), a soup folder (its "
                                                            "greedy soup), a .safetensors file or an exported "
                                                            "artifact (.onnx, .pt2).")] = None,
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
    masks_out: Annotated[Optional[Path], typer.Option(help="Segmentation models: write each image's mask "
                                                           "(<stem>.png, a palette PNG of class indices at the "
                                                           "image's size), <stem>-overlay.png and areas.json "
                                                           "(each class's pixel share and count) into this "
                                                           "folder.")] = None,
    input_size: Annotated[str, typer.Option(help="Segmentation models: the size the model sees each image at: "
                                                 "model (the training size, the image stretched to it), "
                                                 "native (the image's own, padded to the model's stride; at "
                                                 "most 1 Mpixel) or window (the image's own, in overlapping "
                                                 "windows of the training size). The mask is at the image's "
                                                 "size in each case.")] = "model",
    boxes_out: Annotated[Optional[Path], typer.Option(help="Detection models: draw each image's detections on it "
                                                           "(<stem>.png, at the image's size) and write boxes.json "
                                                           "(every image's detections) into this folder.")] = None,
    score_threshold: ScoreThreshold = None,
    nms_iou: NmsIou = None,
    images_out: ImagesOut = None,
    tile: Tile = None,
    compare: Compare = False,
) -> None:
    """Top-k classes for image files of any size and mode (here, or by a running service with --url); a
    segmentation model's classes by their share of the pixels, and with --masks-out the masks; a detection
    model's boxes, and with --boxes-out the images with their boxes drawn; a restoration model's restored
    images, with --images-out written there."""
    fmt = machine_format(as_json, as_csv)
    for folder, option in ((masks_out, "--masks-out"), (boxes_out, "--boxes-out"), (images_out, "--images-out")):
        check_out_folder(folder, option)
    if (checkpoint is None) == (url is None):
        raise ConfigError("give --checkpoint RUN (predict here) or --url http://HOST:PORT/v1/models/NAME "
                          "(ask a running cnnkit serve), one of the two")
    if url is not None:
        _refuse_local_options(tta=tta, strict=strict, device=device != "auto", amp=amp != "off",
                              adapt=adapt is not None, input_size=input_size != "model",
                              boxes_out=boxes_out is not None, score_threshold=score_threshold is not None,
                              nms_iou=nms_iou is not None, tile=tile is not None, compare=compare)
        preds = _predict_remote(url, inputs, topk, masks_out, images_out)
        source = {"service": url}
    else:
        check_early(device=device, amp=amp)
        from cnnkit.evaluate.adapt import check_adapt
        from cnnkit.evaluate.masks import check_input_size

        check_adapt(adapt, alpha, tent_lr)
        check_input_size(input_size)
        from cnnkit.evaluate import predict as predict_files

        preds = predict_files(checkpoint, inputs, topk=topk, tta=tta, device=device, strict=strict, amp=amp,
                              adapt=adapt, alpha=alpha, tent_lr=tent_lr, batch_size=batch_size, masks_out=masks_out,
                              input_size=input_size, keep_masks=False, boxes_out=boxes_out,
                              score_threshold=score_threshold, nms_iou=nms_iou, images_out=images_out, tile=tile,
                              compare=compare)
        source = {"checkpoint": checkpoint}
    _print_predictions(preds, fmt, {**source, **({"masks": masks_out} if masks_out is not None else {}),
                                    **({"boxes": boxes_out} if boxes_out is not None else {}),
                                    **({"restored": images_out} if images_out is not None else {})})


def _refuse_local_options(**given: bool) -> None:
    """With --url the service decides how predictions run: the options given that set it here, refused in one
    line."""
    local = [f"--{name.replace('_', '-')}" for name, on in given.items() if on]
    if local:
        raise ConfigError(f"{', '.join(local)} set how predictions run here; with --url the service decides "
                          f"(start it with the options you want), so leave them out")


def _print_predictions(preds: list[Any], fmt: Optional[str], source: dict[str, Any]) -> None:
    """The predictions as a table and a summary (naming `source`), or as JSON or CSV (`fmt`)."""
    if fmt is not None:  # full paths; a probability as the fraction it is
        if fmt == "json":
            print_rows([{"image": str(Path(p.path).absolute()), "top": p.answer, **_mask_fields(p)} for p in preds],
                       fmt)
        else:
            print_rows([{"image": str(Path(p.path).absolute()), "rank": k + 1, **a}
                        for p in preds for k, a in enumerate(p.answer)], fmt)
        return
    t = Table(title="predictions", title_justify="left")
    t.add_column("image", overflow="fold")
    for i in range(max(len(_cells(p.answer, p.shown)) for p in preds)):
        t.add_column(f"#{i + 1}")
    for p in preds:
        t.add_row(str(p.path), *_cells(p.answer, p.shown))
    stdout.print(t)
    summary("predict", {"images": len(preds), **source})


def _mask_fields(p: Any) -> dict[str, Any]:
    """What a segmentation or detection prediction adds to its JSON line: the image's size, every class's area
    (segmentation), the files written."""
    if p.size is None:
        return {}
    return {"height": p.size[0], "width": p.size[1], **({"areas": p.areas} if p.areas else {}),
            **{name: str(Path(f).absolute()) for name, f in p.files.items()}}


def parse_scales(text: str | None) -> list[float] | None:
    """--scales' comma-separated numbers (None when not given); anything else is refused in one line."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--scales takes comma-separated numbers such as 0.75,1,1.25, got {text!r}") from None
    return values


def _cells(answer: list[dict[str, Any]], shown: list[str]) -> list[str]:
    """An image's answers as the table shows them: a class and its probability in percent; another task's
    answers in its own format."""
    if answer and all("class" in a and "probability" in a for a in answer):
        return [f"{a['class']} {percent(a['probability'])}" for a in answer]
    return shown


def _predict_remote(url: str, inputs: list[Path], topk: int, masks_out: Optional[Path],
                    images_out: Optional[Path] = None) -> list[Any]:
    """Predictions of a running service for image files (folders expanded), in requests of up to 32 images; a
    segmentation model's masks written to `masks_out` as `predict` writes them here; a restoration model's
    images, one request each, written to `images_out`."""
    from cnnkit.data.images import list_image_files
    from cnnkit.evaluate import Prediction
    from cnnkit.serve.client import Client

    files = list_image_files(list(inputs))
    preds, folder, classes, palette = [], None, [], []
    with Client(url) as client:
        card = client.card()
        if card.get("task") == "restore":
            return _restore_remote(client, url, files, images_out)
        if images_out is not None:
            raise ConfigError(f"--images-out is for restoration models; the model at {url} is not one")
        detector = card.get("task") == "detect"  # its boxes are in each image's pixels: say its size
        for i in range(0, len(files), 32):
            part = files[i:i + 32]
            for f, p in zip(part, client.predict(part, topk)):
                top = list(p["top"])
                pred = Prediction(Path(f), [], [_shown(a) for a in top], top)  # the service's answer as sent
                if detector:
                    from PIL import Image

                    with Image.open(f) as im:  # the header only: the size the boxes are in, as predict gives it
                        pred.size = (im.height, im.width)
                if "mask" in p:
                    pred.size, pred.areas = (p["height"], p["width"]), p["areas"]
                    if masks_out is not None:
                        if folder is None:
                            from cnnkit.evaluate.masks import MaskFolder

                            folder, classes = MaskFolder(masks_out, files), client.card()["classes"]
                        palette = _write_served_mask(folder, pred, p, classes)
                elif masks_out is not None:
                    raise ConfigError(f"--masks-out is for segmentation models; the model at {url} is not one")
                preds.append(pred)
    if folder is not None:
        folder.finish({"service": url, "input_size": "model"}, classes, palette[:len(classes)])
    return preds


def _restore_remote(client: Any, url: str, files: list[Path], images_out: Optional[Path]) -> list[Any]:
    """A restoration service's images for `files`, one request each, written to `images_out` as sent."""
    import io

    from PIL import Image

    from cnnkit.evaluate import Prediction
    from cnnkit.evaluate.restore import RestoredFolder

    if images_out is None:
        raise ConfigError(f"the model at {url} restores images: give --images-out to keep them")
    folder, preds = RestoredFolder(images_out, files), []
    for f in files:
        png = client.restore(f)
        with Image.open(io.BytesIO(png)) as im:
            h, w = im.height, im.width
        written = folder.write_restored(Path(f), png, (h, w))
        preds.append(Prediction(Path(f), [], [f"{w}×{h}"], [{"height": h, "width": w}], (h, w), files=written))
    folder.finish_restored({"service": url})
    return preds


def _shown(a: dict[str, Any]) -> str:
    """A served answer as a line shows it: a segmentation class's share in percent, a detection's class and score,
    else its values."""
    if "area" in a:
        from cnnkit.tasks import get_task

        return f"{a['class']} {get_task('segment').format_value(a['area'])}"
    if "box" in a and "score" in a:  # a detection: its class and score, as predict shows it here
        from cnnkit.tasks import get_task

        return f"{a['class']} {get_task('detect').format_value(a['score'])}"
    return " ".join(str(v) for v in a.values())


def _write_served_mask(folder: Any, pred: Any, answer: dict[str, Any], classes: list[str]) -> list[Any]:
    """Write a served mask (its PNG as sent) and an overlay on the local image; the mask's palette."""
    import base64

    from cnnkit.data.images import load_image_file
    from cnnkit.evaluate.masks import read_mask_png

    data = base64.b64decode(answer["mask"])
    mask, palette = read_mask_png(data, f"the service's mask of {pred.path.name}")
    image = load_image_file(pred.path)
    if tuple(mask.shape) != (image.height, image.width):
        raise ConfigError(f"the service's mask of {pred.path.name} is {mask.shape[1]}×{mask.shape[0]}, the image "
                          f"{image.width}×{image.height}: is the URL a cnnkit serve of this version?")
    pred.files = folder.write(pred.path, image, mask, palette, classes, pred.areas, data)
    return palette
