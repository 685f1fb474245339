"""`cnnkit explain` on real images with a trained run: PNGs that decode, a JSON of statistics, the
benchmark table, and one-line errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cnnkit.cli import main
from cnnkit.explain import resolve_layer
from cnnkit.artifacts import load
from tests.conftest import write_imagefolder


def test_explain_writes_a_png_per_image_and_json(trained_run, tmp_path, capsys, sample_train):
    folder = write_imagefolder(tmp_path / "imgs", sample_train, classes=(0, 7), per_class=2)
    out = tmp_path / "explained"
    code = main(["explain", str(folder), "--checkpoint", str(trained_run.run_dir),
                 "--method", "gradcam,eigencam,saliency,lrp", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > im.size[1]  # the image, then one panel per method
    report = json.loads((out / "explain.json").read_text())
    assert report["methods"] == ["gradcam", "eigencam", "saliency", "lrp"] and len(report["images"]) == 4
    rec = report["images"][0]
    assert rec["predicted"] in sample_train.classes and rec["target"] == rec["predicted"]
    g = rec["methods"]["gradcam"]
    assert g["layer"] == resolve_layer(load(trained_run.run_dir).model)[0]
    assert 0 <= g["mean"] <= 1 and len(g["peak"]) == 2 and "conservation_error" in rec["methods"]["lrp"]
    assert not list(out.glob(".*.tmp*"))  # no temporary files left behind (.cnnkit-files.json is the manifest)

    code = main(["explain", "--images", str(folder), "--checkpoint", str(trained_run.run_dir),
                 "--target", "Sneaker", "--out", str(tmp_path / "t")])
    assert code == 0
    assert all(r["target"] == "Sneaker" for r in json.loads((tmp_path / "t" / "explain.json").read_text())["images"])


@pytest.mark.parametrize("args, message", [
    (["--method", "gradcamm"], "unknown method 'gradcamm'"),
    (["--target", "12"], "target class 12 is out of range"),
    (["--target", "Sneakers"], "unknown target class 'Sneakers'"),
    (["--layer", "stages.9"], "unknown layer 'stages.9'"),
    (["--layer", "fc"], "not a B×C×H×W feature map"),
])
def test_explain_bad_input_is_one_line(trained_run, tmp_path, capsys, sample_train, args, message):
    folder = write_imagefolder(tmp_path / "imgs", sample_train, classes=(0,), per_class=1, mixed=False)
    code = main(["explain", str(folder), "--checkpoint", str(trained_run.run_dir), "--out", str(tmp_path / "o"),
                 *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_explain_benchmark_on_cluttered_sample(tmp_path, capsys):
    from cnnkit.train import fit

    run = fit(model="resnet9", model_kwargs={"width": 8}, data="cluttered-sample", epochs=1, batch_size=128,
              out=str(tmp_path / "run"), progress=False)
    out = tmp_path / "bench"
    code = main(["explain", "--benchmark", "--checkpoint", str(run.run_dir), "--data", "cluttered-sample",
                 "--method", "gradcam,saliency", "--limit", "24", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    lines = (out / "explain-benchmark.csv").read_text().splitlines()
    assert lines[0].startswith("method,images_per_s,pointing_game") and len(lines) == 4  # header, centre, 2
    assert "| gradcam |" in (out / "explain-benchmark.md").read_text()
    with Image.open(out / "explain-benchmark.png") as im:
        assert im.format == "PNG"
    code = main(["explain", "--benchmark", "--checkpoint", str(run.run_dir), "--data", "sample"])
    assert code == 2 and "has no ground-truth boxes" in capsys.readouterr().err


def test_visualize_writes_pngs(trained_run, tmp_path, capsys, sample_train):
    folder = write_imagefolder(tmp_path / "imgs", sample_train, classes=(0,), per_class=1, mixed=False)
    for what, extra in [("filters", []), ("class-models", ["--steps", "5"]),
                        ("activations", ["--steps", "5", "--channels", "0-3", "--layer", "stem"]),
                        ("feature-maps", ["--images", str(folder), "--layer", "stem"])]:
        out = tmp_path / f"{what}.png"
        assert main(["visualize", what, "--checkpoint", str(trained_run.run_dir), "--out", str(out), *extra]) == 0
        with Image.open(out) as im:
            assert im.format == "PNG"
    assert main(["visualize", "feature-maps", "--checkpoint", str(trained_run.run_dir)]) == 2
    assert "pass --images FILE" in capsys.readouterr().err
    assert main(["visualize", "activations", "--checkpoint", str(trained_run.run_dir), "--channels", "x"]) == 2
    assert "channels must look like 0-7" in capsys.readouterr().err
