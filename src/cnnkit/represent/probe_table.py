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
from cnnkit.represent.features import (DEFAULT_POOL, Features, extract, load_feature_splits, load_features_data,
                                      pool_features, read_features_meta, resolve_layers)
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
          heads: list[str] | None = None, pool: str | None = None, data_dir: str | os.PathLike | None = None,
          train_per_class: int | None = None, train_limit: int | None = None, test_limit: int | None = None,
          random_baseline: bool = False, pixels: bool = False, epochs: int = 30, device: str = "cpu",
          seed: int = 0, out: str | os.PathLike | None = None, progress: bool = False,
          features: list[str | os.PathLike] | tuple = ()) -> list[ProbeRow]:
    """Test accuracy of each head on each layer's frozen features, for each checkpoint (and the baselines) and
    each features file (`cnnkit features`: its stored train and test features, probed as they are). Trained on
    the train split of `data` (K images per class with `train_per_class`), scored on its test split; every
    source on the same test images. `pool` defaults to DEFAULT_POOL for checkpoints and to a file's own pooling.
    With `out`, writes probe.json and probe.md there."""
    from cnnkit.runtime import pick_device

    heads = heads or ["linear"]
    _check_request(checkpoints, features, heads, random_baseline, pixels)
    dev = pick_device(device)
    sources: list[tuple[str, LoadedCheckpoint]] = [(str(Path(c)), load(c, dev)) for c in checkpoints]
    if random_baseline:
        sources.append((f"random init of {sources[0][1].meta['model']}", random_init(sources[0][1], seed)))
    files = {str(Path(f)): load_feature_splits(f) for f in features}
    train = test = None
    if sources:
        first = sources[0][1]
        train = load_features_data(first, data, "train", data_dir, per_class=train_per_class, limit=train_limit,
                                   seed=seed)
        test = load_features_data(first, data, "test", data_dir, limit=test_limit, seed=seed)
    reference = (train.name if train is not None else data, test.labels if test is not None else None)
    stored = {}  # every file checked before any probe trains: a refusal comes at once
    for name, splits in files.items():
        tr, te = _file_splits(name, splits, reference, train_per_class, train_limit, test_limit, seed)
        stored[name], reference = (tr, te, _file_layers(name, tr, layer, pool)), (tr.data, te.labels)
    if out is not None:  # after the refusals: a refused probe leaves no folder behind
        claim_dir(out)
    rows: list[ProbeRow] = []
    for name, ckpt in sources:
        rows += _probe_checkpoint(name, ckpt, train, test, layer, heads, pool or DEFAULT_POOL, epochs, seed, dev,
                                  progress)
    for name, (tr, te, layers) in stored.items():
        rows += _probe_file(name, tr, te, layers, heads, pool, epochs, seed)
    if pixels:
        for h in [h for h in heads if h != "conv"]:
            s = fit_head(h, train.images.float().flatten(1) / 255, train.labels, test.images.float().flatten(1) / 255,
                         test.labels, epochs=epochs, seed=seed)
            rows.append(ProbeRow("pixels", "input", h, s.train_acc, s.test_acc, s.dims, s.seconds))
    if out is not None:
        n_train, n_test = (len(train), len(test)) if train is not None else (len(tr.labels), len(te.labels))
        write_table(rows, Path(out), {"data": reference[0], "train_images": n_train, "test_images": n_test,
                                      "pool": pool or (DEFAULT_POOL if sources else tr.pool),
                                      "train_per_class": train_per_class})
    return rows


def _check_request(checkpoints: list, features: list | tuple, heads: list[str], random_baseline: bool,
                   pixels: bool) -> None:
    """Refusals before anything is loaded: unknown heads, no source, a features file given as a checkpoint, and
    baselines that need a network when there is none."""
    bad = [h for h in heads if h not in HEADS]
    if bad:
        raise ConfigError(f"unknown probe head {bad[0]!r}; choose from {', '.join(HEADS)}")
    if not checkpoints and not features:
        raise ConfigError("give at least one --checkpoint or --features file")
    for c in checkpoints:
        if Path(c).is_file() and read_features_meta(Path(c)) is not None:
            raise ConfigError(f"{c} is a features file (`cnnkit features` wrote it), not a checkpoint: probe it "
                              f"with --features {c}")
    if not checkpoints and (random_baseline or pixels):
        raise ConfigError(f"{'--random-init' if random_baseline else '--pixels'} needs a --checkpoint: a features "
                          f"file holds neither a network nor the images")


def _probe_checkpoint(name: str, ckpt: LoadedCheckpoint, train, test, layer: str, heads: list[str], pool: str,
                      epochs: int, seed: int, dev: torch.device, progress: bool) -> list[ProbeRow]:
    """The rows of one network: its layers' features of the train and test images, each head on each layer."""
    rows = []
    map_pool = "none" if "conv" in heads else pool
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
    return rows


def _file_splits(name: str, splits: dict[str, Features], reference: tuple[str | None, torch.Tensor | None],
                 train_per_class: int | None, train_limit: int | None, test_limit: int | None,
                 seed: int) -> tuple[Features, Features]:
    """A features file's train and test features, as the probe needs them: both splits there, of the data
    probed, subsets taken as for a checkpoint, and its test images the ones every other source is scored on."""
    from cnnkit.data import per_class_subset, train_val_split

    missing = [s for s in ("train", "test") if s not in splits]
    if missing:
        raise ConfigError(f"{name} holds no {missing[0]} features: a probe trains on the train split and scores on "
                          f"the test split; write both with `cnnkit features` (its default --split both)")
    tr, te = splits["train"], splits["test"]
    data, labels = reference
    if data is not None and tr.data != data:
        raise ConfigError(f"{name} holds features of {tr.data}, not of {data}: give --data {tr.data}, or write "
                          f"features of {data} (`cnnkit features --data {data}`)")

    def keep(f: Features, idx: torch.Tensor) -> Features:
        return Features({n: t[idx] for n, t in f.layers.items()}, f.labels[idx], f.classes, f.pool, f.checkpoint,
                        f.data, f.split)

    if train_per_class is not None:
        tr = keep(tr, per_class_subset(tr.labels, train_per_class, seed))
    if train_limit is not None and train_limit < len(tr.labels):  # stratified, as load_features_data takes them
        tr = keep(tr, train_val_split(tr.labels, train_limit / len(tr.labels), seed)[1])
    if test_limit is not None and test_limit < len(te.labels):
        te = keep(te, train_val_split(te.labels, test_limit / len(te.labels), seed)[1])
    if labels is not None and not torch.equal(te.labels, labels):
        raise ConfigError(f"{name}: its test features are of other images than the other sources' "
                          f"({len(te.labels)} against {len(labels)}): write them without --limit, or probe the "
                          f"file alone")
    return tr, te


def _file_layers(name: str, train: Features, layer: str, pool: str | None) -> list[str]:
    """The layers of a features file that --layer names ('blocks': all it holds), once --pool is known to apply
    to them: a file keeps its pooling, and only maps (`none`) can be pooled further."""
    wanted = list(train.layers) if layer == "blocks" else [s.strip() for s in layer.split(",") if s.strip()]
    unknown = [n for n in wanted if n not in train.layers]
    if unknown:
        raise ConfigError(f"no layer {unknown[0]!r} in {name}; it holds: {', '.join(train.layers)}")
    if pool is not None and pool != train.pool and train.pool != "none":
        raise ConfigError(f"{name} holds features pooled {train.pool}; they cannot be pooled {pool}: leave out "
                          f"--pool, or write them with --pool {pool} (or none)")
    return wanted


def _probe_file(name: str, train: Features, test: Features, wanted: list[str], heads: list[str], pool: str | None,
                epochs: int, seed: int) -> list[ProbeRow]:
    """The rows of a features file: each head on each stored layer, pooled further only when it holds maps."""
    rows = []
    for n in wanted:
        for h in heads:
            a, b = train.layers[n], test.layers[n]
            if h != "conv" and pool not in (None, "none") and a.ndim == 4:
                a, b = pool_features(a, pool), pool_features(b, pool)
            s = fit_head(h, a, train.labels, b, test.labels, epochs=epochs, seed=seed)
            rows.append(ProbeRow(name, n, h, s.train_acc, s.test_acc, s.dims, s.seconds))
    return rows


def write_table(rows: list[ProbeRow], out: Path, info: dict) -> None:
    atomic_write_text(out / "probe.json", json.dumps({**info, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    lines = ["| source | layer | head | test acc | train acc | dims |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:  # accuracies as every command shows them to a person: percent, two decimals
        lines.append(f"| {r.source} | {r.layer} | {r.head} | {100 * r.test_acc:.2f}% | "
                     f"{'—' if r.train_acc != r.train_acc else f'{100 * r.train_acc:.2f}%'} | {r.dims} |")
    atomic_write_text(out / "probe.md", "\n".join(lines) + "\n")
