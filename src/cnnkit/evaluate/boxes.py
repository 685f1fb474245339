"""Detection predictions on image files of any size: each image is resized (stretched) to the checkpoint's
training size, the detector's boxes are scaled back to the image's own pixels, and `cnnkit predict --boxes-out`
draws them on the image (`<stem>.png`) and records every image's detections in `boxes.json`.

Which detections are answered: those scoring at least the score threshold (`--score-threshold`, default
DEFAULT_SCORE_THRESHOLD, the confidence most detection tools show by default; the detector's own lower threshold
is what evaluation's mAP uses), after the detector's own non-maximum suppression (`--nms-iou` sets its IoU where
the model is a checkpoint; an exported graph has its suppression inside)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cnnkit.errors import ConfigError
from cnnkit.evaluate.masks import MaskFolder

DEFAULT_SCORE_THRESHOLD = 0.25
BOXES_FILE = "boxes.json"
# one colour per class (cycled), distinct on photographs and on grey images alike
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#ffd8b1", "#000075"]


def check_postprocess(score_threshold: float | None, nms_iou: float | None) -> None:
    """Both in [0, 1] when given; anything else is one line (ConfigError)."""
    for option, v in (("--score-threshold", score_threshold), ("--nms-iou", nms_iou)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise ConfigError(f"{option} is a fraction from 0 to 1, got {v}")


def scaled_answer(detections: torch.Tensor, names: list[str], input_size: tuple[int, int],
                  image_size: tuple[int, int], threshold: float) -> list[dict[str, Any]]:
    """One image's D×6 detections (x0, y0, x1, y1, score, class; class -1 pads) at the model's `input_size`
    (H, W) as answers at the image's own `image_size` (H, W): class, score and box [x0, y0, x1, y1] in the
    image's pixel-edge coordinates, best first, those scoring at least `threshold`."""
    (h_in, w_in), (h, w) = input_size, image_size
    scale = torch.tensor([w / w_in, h / h_in, w / w_in, h / h_in])
    out = []
    for d in detections.float().cpu():
        if d[5] < 0 or d[4] < threshold:
            continue
        box = (d[:4] * scale).clamp_min(0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32))
        out.append({"class": names[int(d[5])], "score": round(float(d[4]), 5),
                    "box": [round(float(v), 2) for v in box]})
    return sorted(out, key=lambda a: -a["score"])


def drawn_png(image: Image.Image, answer: list[dict[str, Any]], classes: list[str]) -> bytes:
    """The image (RGB) with each answer's box drawn in its class's colour and labelled "class score", the best
    on top."""
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes

    rgb = TF.pil_to_tensor(image.convert("RGB"))
    answer = answer[::-1]  # the best drawn last, on top of the others
    if answer:
        boxes = torch.tensor([a["box"] for a in answer], dtype=torch.float32)
        labels = [f"{a['class']} {a['score']:.2f}" for a in answer]
        colours = [COLOURS[classes.index(a["class"]) % len(COLOURS)] for a in answer]
        width = max(1, round(min(rgb.shape[-2:]) / 150))
        rgb = draw_bounding_boxes(rgb, boxes, labels, colours, width=width)
    buf = io.BytesIO()
    TF.to_pil_image(rgb).save(buf, format="PNG")
    return buf.getvalue()


class BoxFolder(MaskFolder):
    """The folder `--boxes-out` names: `<stem>.png` (the image with its detections drawn) per image and one
    `boxes.json`; names made unique within a call, every file checked before the first is written (as
    `--masks-out`'s folder)."""

    summary_file = BOXES_FILE

    def __init__(self, folder: Any, files: list[Path]):
        super().__init__(folder, files, option="--boxes-out")

    def files_of(self, stem: str) -> dict[str, Path]:
        return {"drawn": self.root / f"{stem}.png"}

    def write_boxes(self, path: Path, image: Image.Image, answer: list[dict[str, Any]],
                    classes: list[str]) -> dict[str, Path]:
        """Write one image's drawing; its record (size, detections, file) joins boxes.json at `finish`."""
        from cnnkit.artifacts import atomic_write_bytes

        files = self.claimed_files(path)
        atomic_write_bytes(files["drawn"], drawn_png(image, answer, classes))
        self.records.append({"image": str(Path(path).absolute()), "height": image.height, "width": image.width,
                             "drawn": files["drawn"].name, "detections": answer})
        return files

    def finish_boxes(self, source: dict[str, Any], classes: list[str]) -> Path:
        """Write boxes.json: where the detections came from, the classes, and each image's record."""
        return self.finish(source, classes, [])
