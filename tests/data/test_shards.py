"""WebDataset shards: `cnnkit data shard` writes them, `WebDatasetLoader` reads them per rank, epoch and step."""

from __future__ import annotations

import hashlib
import json
import tarfile
import warnings
from pathlib import Path

import pytest
import torch

from cnnkit.cli import main
from cnnkit.data.imagefolder import decode_files, scan_imagefolder
from cnnkit.data.loader import Normalize
from cnnkit.data.shards import (WebDatasetLoader, _shard_samples, open_webdataset, parse_size,
                                write_shards)
from cnnkit.data.settings import AugmentConfig
from cnnkit.errors import ConfigError, DataError
from tests.conftest import write_imagefolder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, sample_train) -> Path:
    """3 classes × 12 real sample images, PNG and JPEG of mixed sizes and modes (decoded to 3×64×64)."""
    return write_imagefolder(tmp_path_factory.mktemp("imgs") / "photos", sample_train)


@pytest.fixture(scope="module")
def tiny(folder, tmp_path_factory) -> Path:
    """One image per shard (a shard size smaller than any image): 24 train, 6 val, 6 test shards."""
    out = tmp_path_factory.mktemp("tiny") / "shards"
    write_shards(f"imagefolder:{folder}", out, shard_size=1, val_fraction=0.15, workers=0)
    return out


def identity(chans: int) -> Normalize:
    return Normalize([0.0] * chans, [1 / 255] * chans)  # float pixel values, 0..255


def epoch(loader: WebDatasetLoader, e: int, start: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    loader.set_epoch(e, start)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return xs, ys


def fingerprints(xs: list[torch.Tensor]) -> list[str]:
    """One hash per image: which images a loader gave, whatever the batches."""
    return [hashlib.sha256(im.to(torch.uint8).numpy().tobytes()).hexdigest() for x in xs for im in x]


def test_round_trip_every_image_once_with_its_pixels_and_label(folder, tmp_path, capsys, monkeypatch):
    # In-process reading: the persistent workers of sample_channel_stats' StreamLoader, once garbage, can take
    # seconds to stop when the cyclic collector finds them.
    monkeypatch.setattr("cnnkit.data.shards.default_workers", lambda world=1: 0)
    out = tmp_path / "shards"
    code = main(["data", "shard", f"imagefolder:{folder}", "--out", str(out), "--shard-size", "30KiB"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "manifest.json" in captured.out and "27 images" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == sorted(p.name for p in folder.iterdir())
    assert manifest["in_chans"] == 3 and manifest["img_size"] == [64, 64] and manifest["skipped"] == 0

    sources = {"train": decode_files(scan_imagefolder(folder, "train")),
               "test": decode_files(scan_imagefolder(folder, "test"))}
    sources["val"] = sources["train"]  # val keys index the train split's files
    seen: dict[str, set[int]] = {}
    for split in ("train", "val", "test"):
        data = open_webdataset(out, split)
        assert len(data) == manifest["splits"][split]["images"] > 0
        keys = [s.key for p in data.shards for s in _shard_samples(p, data.num_classes)]
        loader = WebDatasetLoader(data, 5, identity(data.in_chans), workers=0)  # the manifest's order
        xs, ys = epoch(loader, 0)
        assert len(xs) == len(loader) == -(-len(data) // 5)
        x, y = torch.cat(xs), torch.cat(ys)
        src = sources[split]
        idx = torch.tensor([int(k) for k in keys])
        assert len(set(keys)) == len(keys) == len(x)
        assert torch.equal(y, src.labels[idx])
        assert torch.equal(x.to(torch.uint8), src.images[idx]) and torch.equal(x, x.round())
        seen[split] = set(idx.tolist())
    assert not seen["train"] & seen["val"]
    assert seen["train"] | seen["val"] == set(range(len(sources["train"])))
    assert seen["test"] == set(range(len(sources["test"])))

    # each shard mixes the classes, and rolls over before 30 KiB unless one image alone is larger
    for split, entry in manifest["splits"].items():
        for sh in entry["shards"]:
            path = out / sh["name"]
            assert path.stat().st_size == sh["bytes"] and sh["bytes"] <= 30 * 1024
            with tarfile.open(path) as tf:
                assert len(tf.getnames()) == 2 * sh["images"]
    train_shards = manifest["splits"]["train"]["shards"]
    assert len(train_shards) >= 3
    first = open_webdataset(out, "train").shards[0]
    assert len({s.label for s in _shard_samples(first, 3)}) > 1


def test_rollover_at_a_tiny_shard_size(tiny):
    manifest = json.loads((tiny / "manifest.json").read_text())
    counts = {s: [sh["images"] for sh in e["shards"]] for s, e in manifest["splits"].items()}
    assert counts == {"train": [1] * 24, "val": [1] * 6, "test": [1] * 6}
    assert sorted(p.name for p in tiny.glob("train-*.tar"))[-1] == "train-000023.tar"


def test_two_ranks_read_disjoint_shards_and_together_the_whole_epoch(tiny):
    data = open_webdataset(tiny, "train")
    norm = identity(data.in_chans)
    ranks = [WebDatasetLoader(data, 4, norm, shuffle=True, seed=3, rank=r, world=2, workers=0) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 24 // 4
    mine = [set(r.rank_shards(1)) for r in ranks]
    assert not mine[0] & mine[1] and mine[0] | mine[1] == set(data.shards)
    got = [epoch(r, 1) for r in ranks]
    assert [len(xs) for xs, _ in got] == [6, 6] and all(len(x) == 2 for xs, _ in got for x in xs)
    seen = fingerprints(got[0][0]) + fingerprints(got[1][0])
    whole = fingerprints(epoch(WebDatasetLoader(data, 4, norm, workers=0), 0)[0])
    assert sorted(seen) == sorted(whole)
    assert set(ranks[0].rank_shards(2)) != mine[0]  # another epoch, another share


def test_epochs_differ_and_repeat(tiny):
    data = open_webdataset(tiny, "train")
    loader = WebDatasetLoader(data, 4, identity(data.in_chans), shuffle=True, seed=0, drop_last=True, workers=0,
                              buffer=8)
    e1, e1_again, e2 = epoch(loader, 1), epoch(loader, 1), epoch(loader, 2)
    assert all(torch.equal(a, b) for a, b in zip(e1[0], e1_again[0])) and len(e1[0]) == 6
    assert fingerprints(e1[0]) != fingerprints(e2[0]) and sorted(fingerprints(e1[0])) == sorted(fingerprints(e2[0]))


@pytest.mark.parametrize("workers,start", [(0, 2), (2, 3)])
def test_resume_mid_epoch_gives_the_rest_of_the_epoch(tiny, workers, start):
    data = open_webdataset(tiny, "train")
    augment = AugmentConfig(crop_padding=4, hflip=True)
    loader = WebDatasetLoader(data, 6, identity(data.in_chans), shuffle=True, seed=1, augment=augment,
                              drop_last=True, workers=workers, buffer=5)
    xs, ys = epoch(loader, 4)
    assert len(xs) == len(loader) == 4
    rest_x, rest_y = epoch(loader, 4, start)
    assert len(rest_x) == len(xs) - start
    assert all(torch.equal(a, b) for a, b in zip(rest_y, ys[start:]))
    assert all(torch.equal(a, b) for a, b in zip(rest_x, xs[start:]))


def test_workers_keep_the_manifest_order_when_evaluating(tiny):
    data = open_webdataset(tiny, "val")
    norm = identity(data.in_chans)
    one = epoch(WebDatasetLoader(data, 2, norm, workers=0), 0)
    two = epoch(WebDatasetLoader(data, 2, norm, workers=2), 0)
    assert all(torch.equal(a, b) for a, b in zip(one[0] + one[1], two[0] + two[1])) and len(one[0]) == 3


def test_unreadable_images_are_skipped_and_counted(folder, tmp_path, sample_train):
    src = write_imagefolder(tmp_path / "imgs", sample_train, classes=(0, 1), per_class=5, mixed=False)
    (src / "Trouser" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning) as caught:
        manifest = write_shards(f"imagefolder:{src}", tmp_path / "out", test_fraction=0.3, workers=0)
    messages = [str(w.message) for w in caught]
    assert any("bad.png" in m for m in messages) and any("skipped 1 unreadable" in m for m in messages)
    assert manifest["skipped"] == 1
    assert sum(e["images"] for e in manifest["splits"].values()) == 10
    assert [f for e in manifest["splits"].values() for f in e["skipped"]] == ["Trouser/bad.png"]


def test_cli_refuses_a_foreign_folder_and_a_bad_shard_size(folder, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for argv, message in [(["--out", str(foreign)], "holds files cnnkit did not write (notes.txt)"),
                          (["--out", str(tmp_path / "new"), "--shard-size", "12XB"], "--shard-size must be a size"),
                          (["--out", str(tmp_path / "new"), "--shard-size", "0"], "--shard-size must be at least")]:
        code = main(["data", "shard", f"imagefolder:{folder}", *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing written, nothing created
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_parse_size():
    assert parse_size("500MB") == 500 * 10**6 and parse_size("1GB") == 10**9 and parse_size("64KiB") == 65536
    assert parse_size("4096") == 4096 and parse_size("1.5 GiB") == 3 << 29 and parse_size("2kb") == 2000
    for bad in ("", "GB", "1.2.3", "-5", "1 gigabyte"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_open_errors_are_one_line(tiny, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    cases = [(lambda: open_webdataset(tmp_path / "nowhere", "train"), "is not a folder"),
             (lambda: open_webdataset(copy, "validation"), "unknown split 'validation'")]
    for call, message in cases:
        with pytest.raises(DataError, match=message) as e:
            call()
        assert len(str(e.value).splitlines()) == 1
    (copy / "val-000002.tar").unlink()
    with pytest.raises(DataError, match="val-000002.tar is missing"):
        open_webdataset(copy, "val")
    open_webdataset(copy, "train")  # the other splits are whole
    (copy / "manifest.json").write_text('{"format": "cnnkit-webdataset/1", "classes": 3}')
    with pytest.raises(DataError, match="is damaged"):
        open_webdataset(copy, "train")
    (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match="has no manifest.json"):
        open_webdataset(copy, "train")


def test_overwrite_replaces_shards_it_wrote(folder, tmp_path):
    out = tmp_path / "out"
    write_shards(f"imagefolder:{folder}", out, shard_size=1, workers=0)
    with pytest.raises(ConfigError, match="already holds shards"):
        write_shards(f"imagefolder:{folder}", out, workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manifest = write_shards(f"imagefolder:{folder}", out, overwrite=True, workers=0)
    assert sorted(p.name for p in out.glob("*.tar")) == ["test-000000.tar", "train-000000.tar", "val-000000.tar"]
    assert manifest["splits"]["train"]["images"] == len(open_webdataset(out, "train"))


def test_shards_are_the_same_bytes_whatever_the_reading_workers(folder, tiny, tmp_path, monkeypatch):
    from cnnkit.data import stream

    monkeypatch.setattr("cnnkit.data.shards.sample_channel_stats",  # in-process: see the round-trip test
                        lambda files, workers=None: stream.sample_channel_stats(files, workers=0))
    out = tmp_path / "again"
    write_shards(f"imagefolder:{folder}", out, shard_size=1, val_fraction=0.15, workers=2)
    names = sorted(p.name for p in tiny.glob("*.tar"))
    assert names == sorted(p.name for p in out.glob("*.tar"))
    assert all((tiny / n).read_bytes() == (out / n).read_bytes() for n in names)
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (tiny, out))
    assert a["splits"] == b["splits"] and a["fingerprint"] == b["fingerprint"]
