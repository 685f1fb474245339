"""The options several verbs share, declared once as `Annotated` types with one help text each (a verb sets
the default: `device: Device = "auto"`), and how the command line's values are read and checked before
anything is loaded or written.

The training options of `cnnkit train` are declared on TrainConfig's fields (see cnnkit.cli.train); an option
here that is also one of them takes that field's help text, so that each option has one text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cnnkit.errors import ConfigError
from cnnkit.train.config import TrainConfig

TRAINING_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig) if "help" in f.metadata}

# -- options that are also training options (their text is TrainConfig's) -------------------------------------
Device = Annotated[str, typer.Option(help=TRAINING_HELP["device"])]
DataDir = Annotated[Optional[Path], typer.Option(help=TRAINING_HELP["data_dir"])]
Strict = Annotated[bool, typer.Option("--strict", help=TRAINING_HELP["strict"])]
DropBadBoxes = Annotated[bool, typer.Option("--drop-bad-boxes", help=TRAINING_HELP["drop_bad_boxes"])]
ModelKw = Annotated[Optional[list[str]], typer.Option("--model-kw", help=TRAINING_HELP["model_kwargs"])]
# a detection model's post-processing (predict, explain, export, serve; cnnkit.evaluate.boxes.check_postprocess)
ScoreThreshold = Annotated[Optional[float], typer.Option(help="Detection models: keep the detections scoring at least "
                                                         "this, 0 to 1 (predict, serve: default 0.25; explain: "
                                                         "default the detector's own; export: baked into the graph, "
                                                         "default the detector's own).")]
NmsIou = Annotated[Optional[float], typer.Option(help="Detection models: the IoU, 0 to 1, above which non-maximum "
                                                 "suppression drops the lower-scoring of two boxes of a class "
                                                 "(default: the detector's own; export bakes it into the graph, "
                                                 "and an exported graph keeps its own).")]

# -- how a training command runs (not what it trains) ----------------------------------------------------------
Resume = Annotated[Optional[Path], typer.Option(help="Continue the run in this directory where it stopped.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing run in --out.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]

# -- checkpoints and inference --------------------------------------------------------------------------------
Checkpoint = Annotated[Optional[Path], typer.Option(help="Run directory (its best checkpoint), soup folder (its "
                                                         "greedy soup) or a .safetensors file.")]
# the verbs that only run the model also take what `cnnkit export` and `cnnkit compress` write
Artifact = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="Run directory (its best checkpoint), soup folder (its greedy soup), a .safetensors file, "
                         "or an exported .onnx or .pt2 file (int8 included).")]
Amp = Annotated[str, typer.Option(help="off (float32, exact), auto (bf16 only where the CPU or GPU computes it "
                                       "natively, as in train), bf16 or fp16.")]
Tta = Annotated[bool, typer.Option("--tta", help="Average with the horizontally flipped image.")]
IgnoreClassNames = Annotated[bool, typer.Option("--ignore-class-names", help="Accept data whose classes have other "
                                                "names than the model's (same number), paired by position; the "
                                                "same names in another order need no option (mapped by name).")]
Adapt = Annotated[Optional[str], typer.Option(
    help="Test-time adaptation of BatchNorm to the images, on a copy of the model: bn (the batch's statistics), "
         "alpha-bn (mixed with the source's by --alpha) or tent (entropy minimization).")]
AdaptAlpha = Annotated[Optional[float], typer.Option(
    "--alpha", help="alpha-bn: weight of the batch's statistics, 0 (source) to 1 (bn); default 0.1.")]
TentLr = Annotated[float, typer.Option(help="tent: Adam learning rate of the BatchNorm scales and shifts.")]

# -- machine output (see cnnkit.cli.console) --------------------------------------------------------------------
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the results as JSON instead of the table: full "
                                                         "paths, accuracies as fractions in [0, 1].")]
CsvOutput = Annotated[bool, typer.Option("--csv", help="Print the results as CSV instead of the table: full "
                                                       "paths, accuracies as fractions in [0, 1].")]

# -- the HTTP service and the explorer ------------------------------------------------------------------------
Host = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 exposes it to the network).")]
Port = Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")]
TokenFile = Annotated[Optional[Path], typer.Option(help="Read the bearer token from this file (one line).")]
AllowOrigin = Annotated[Optional[list[str]], typer.Option(
    help="Without a token, only requests to this server's own address or localhost, from its own pages, are "
         "answered (403 otherwise): also allow this origin, e.g. http://myhost:8000 (repeatable).")]


# -- reading values -------------------------------------------------------------------------------------------

def parse_kv(pairs: list[str] | None, option: str = "--model-kw") -> dict[str, Any]:
    """key=value pairs, values parsed as YAML (so 16 is an int, 0.5 a float, true a bool, [3, 5] a list)."""
    import yaml

    result = {}
    for p in pairs or []:
        k, eq, v = p.partition("=")
        if not eq or not k.strip():
            raise ConfigError(f"{option}: expected key=value (e.g. width=16), got {p!r}")
        try:
            result[k.strip().replace("-", "_")] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"{option} {k.strip()}: cannot read the value {v!r}; write a number, a word, "
                              f"true/false or a list such as [3, 5, 5, 7]") from None
    return result


def parse_img_size(text: str | None) -> int | list[int] | None:
    """--img-size: N (N×N) as an int, or HxW (height x width, e.g. 48x32) as [H, W]."""
    if text is None:
        return None
    parts = text.strip().lower().replace("×", "x").split("x")
    if len(parts) in (1, 2) and all(p.strip().isascii() and p.strip().isdigit() and int(p) > 0 for p in parts):
        sizes = [int(p) for p in parts]
        return sizes[0] if len(sizes) == 1 else sizes
    raise ConfigError(f"--img-size must be a positive side N or HxW (height x width), e.g. 32 or 48x32; got {text!r}")


# -- checking values before anything runs ---------------------------------------------------------------------

def check_early(model: str | None = None, model_kwargs: dict[str, Any] | None = None, device: str | None = None,
                checkpoint: Path | None = None, amp: str | None = None, out: str | None = None) -> None:
    """Check option values as they are parsed, before any data is loaded or folder created: the output folder
    (`out`: not a file, not the file-system root), the model's options, that the device exists (for `checkpoint`,
    CPU-only artifacts choose the CPU) and, for the verbs that run a model, --amp (the training verbs leave it to
    TrainConfig)."""
    if out is not None:
        from cnnkit.artifacts.files import check_out_dir

        check_out_dir(out)
    if amp is not None and amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"--amp must be auto, bf16, fp16 or off, got {amp!r}")
    if model is not None and not model.startswith("timm/"):
        from cnnkit.models import check_options

        check_options(model, model_kwargs or {})
    if device is not None:
        from cnnkit.runtime import cpu_only_artifact, pick_device

        dev = pick_device(device, cpu_only_artifact(checkpoint))
        if amp is not None:
            from cnnkit.runtime import autocast_dtype

            autocast_dtype(amp, dev)  # fp16 on a CPU is refused here, in one line


def check_out_folder(out: Path | None, option: str = "--out") -> None:
    """A folder option must not name an existing file (checked before anything runs or is written)."""
    if out is not None and out.expanduser().exists() and not out.expanduser().is_dir():
        raise ConfigError(f"{option} {out} is a file; give a folder (new or one cnnkit wrote)")
