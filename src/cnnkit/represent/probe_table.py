"""`cnnkit probe`: probes of several checkpoints' layers, with the baselines of RotNet's Table 1 in the same
table (the same architecture at random initialization, and raw pixels)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cnnkit.artifacts import LoadedCheckpoint, atomic_write_text, claim_dir, load
from cnnkit.data import Normalize
from cnnkit.errors import ConfigError
from cnnkit.represent.features import extract, load_features_data, pool_features, resolve_layers
from cnnkit.represent.probe import HEADS, fit_head


@dataclass
class ProbeRow:
    source: str  # the checkpoint, "random init of <model>" or "pixels"
    layer: str
    head: str
    train_acc: float
    test_acc: float
    dims: int
    seconds: float


def random_init(ckpt: LoadedCheckpoint, seed: int = 0) -> LoadedCheckpoint:
    """The checkpoint's architecture, freshly initialized (seeded), with its normalization: the baseline."""
    from cnnkit.models import create

    torch.manual_seed(seed)
    meta = ckpt.meta
    model = create(meta["model"], num_classes=len(meta["classes"]), in_chans=int(meta["in_chans"]),
                   img_size=tuple(meta["img_size"]), **(meta.get("model_kwargs") or {})).eval()
    return LoadedCheckpoint(model, meta, ckpt.path)


def probe(checkpoints: list[str | os.PathLike], data: str | None = None, layer: str = "blocks",
          heads: list[str] | None = None, pool: str = "avg3", data_dir: str | os.PathLike | None = None,
          train_per_class: int | None = None, train_limit: int | None = None, test_limit: int | None = None,
          random_baseline: bool = False, pixels: bool = False, epochs: int = 30, device: str = "cpu",
          seed: int = 0, out: str | os.PathLike | None = None, progress: bool = False) -> list[ProbeRow]:
    """Test accuracy of each head on each layer's frozen features, for each checkpoint (and the baselines).
    Trained on the train split of `data` (K images per class with `train_per_class`), scored on its test
    split. With `out`, writes probe.json and probe.md there."""
    from cnnkit.runtime import pick_device

    heads = heads or ["linear"]
    bad = [h for h in heads if h not in HEADS]
    if bad:
        raise ConfigError(f"unknown probe head {bad[0]!r}; choose from {', '.join(HEADS)}")
    if not checkpoints:
        raise ConfigError("give at least one --checkpoint")
    if out is not None:
        claim_dir(out)
    dev = pick_device(device)
    sources: list[tuple[str, LoadedCheckpoint]] = []
    for c in checkpoints:
        ckpt = load(c, dev)
        sources.append((str(Path(c)), ckpt))
    if random_baseline:
        sources.append((f"random init of {sources[0][1].meta['model']}", random_init(sources[0][1], seed)))
    first = sources[0][1]
    train = load_features_data(first, data, "train", data_dir, per_class=train_per_class, limit=train_limit, seed=seed)
    test = load_features_data(first, data, "test", data_dir, limit=test_limit, seed=seed)
    rows: list[ProbeRow] = []
    map_pool = "none" if "conv" in heads else pool
    for name, ckpt in sources:
        model = ckpt.model.to(dev).eval()
        layers = resolve_layers(model, layer)
        norm = Normalize(*ckpt.normalization, dev)
        ftr = extract(model, train, norm, layers, map_pool, progress=progress)
        fte = extract(model, test, norm, layers, map_pool, progress=progress)
        for n in layers:
            for h in heads:
                a, b = ftr[n], fte[n]
                if h != "conv" and map_pool == "none" and pool != "none" and a.ndim == 4:
                    a, b = pool_features(a, pool), pool_features(b, pool)
                s = fit_head(h, a, train.labels, b, test.labels, epochs=epochs, seed=seed)
                rows.append(ProbeRow(name, n, h, s.train_acc, s.test_acc, s.dims, s.seconds))
    if pixels:
        for h in [h for h in heads if h != "conv"]:
            s = fit_head(h, train.images.float().flatten(1) / 255, train.labels, test.images.float().flatten(1) / 255,
                         test.labels, epochs=epochs, seed=seed)
            rows.append(ProbeRow("pixels", "input", h, s.train_acc, s.test_acc, s.dims, s.seconds))
    if out is not None:
        write_table(rows, Path(out), {"data": train.name, "train_images": len(train), "test_images": len(test),
                                      "pool": pool, "train_per_class": train_per_class})
    return rows


def write_table(rows: list[ProbeRow], out: Path, info: dict) -> None:
    atomic_write_text(out / "probe.json", json.dumps({**info, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    lines = ["| source | layer | head | test acc | train acc | dims |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.source} | {r.layer} | {r.head} | {100 * r.test_acc:.2f} | "
                     f"{'—' if r.train_acc != r.train_acc else f'{100 * r.train_acc:.2f}'} | {r.dims} |")
    atomic_write_text(out / "probe.md", "\n".join(lines) + "\n")
