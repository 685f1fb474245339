"""The service with a segmentation model: each image's mask (a palette PNG, base64) at the image's own size and
its classes' areas, the same as `predict` gives here; images of mixed sizes batched in one forward pass; bad
requests 4xx; `cnnkit predict --url --masks-out` writing what `predict --masks-out` writes. Uses the shared
`seg_run`; all traffic goes to 127.0.0.1 (a TestClient, and one real server process)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> list[Path]:
    """fashion-scenes test images as files: 96×96 gray, 300×200 RGB, 150×90 gray (JPEG)."""
    from cnnkit.data import load_dataset

    scenes = load_dataset("fashion-scenes", "test")
    folder = tmp_path_factory.mktemp("served-scenes")
    out = []
    for i, (size, mode, ext) in enumerate((((96, 96), "L", "png"), ((300, 200), "RGB", "png"),
                                           ((150, 90), "L", "jpg"))):
        out.append(folder / f"scene{i}.{ext}")
        Image.fromarray(scenes.images[i + 3, 0].numpy(), "L").resize(size).convert(mode).save(out[-1])
    return out


@pytest.fixture(scope="module")
def seg_client(seg_run):
    from tests.serve.test_serve import make_client

    c = make_client(seg_run.run_dir, max_images=8)
    yield c
    c.__exit__(None, None, None)


def decoded(answer: dict) -> tuple[np.ndarray, list[int]]:
    im = Image.open(io.BytesIO(base64.b64decode(answer["mask"])))
    assert im.mode == "P"
    return np.array(im), im.getpalette()


def batch_counts(client) -> tuple[float, float]:
    """(forward passes, images) the predict batcher has run so far (none before the first request)."""
    text = client.get("/metrics").text
    found = [re.search(rf'cnnkit_batch_images_{what}\{{kind="predict",model="tiny"\}} (\S+)', text)
             for what in ("count", "sum")]
    return tuple(float(m.group(1)) if m else 0.0 for m in found)


def test_served_masks_equal_predict_at_each_images_size_in_one_batch(seg_client, seg_run, scene_files):
    from cnnkit.artifacts import load
    from cnnkit.evaluate import predict
    from cnnkit.tasks.segment import run_palette

    ckpt = load(seg_run.run_dir, "cpu")
    here = predict(ckpt, scene_files, device="cpu")
    before = batch_counts(seg_client)
    r = seg_client.post("/v1/models/tiny/predict?topk=2",
                        files=[("file", (f.name, f.read_bytes())) for f in scene_files])
    assert r.status_code == 200, r.text
    after = batch_counts(seg_client)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 3)  # three sizes, one forward pass
    served = r.json()["predictions"]
    palette = [v for c in run_palette(ckpt.meta, len(ckpt.classes)) for v in c]
    for answer, p in zip(served, here):
        mask, png_palette = decoded(answer)
        assert answer["image"] == p.path.name and (answer["height"], answer["width"]) == p.size == mask.shape
        assert png_palette[:len(palette)] == palette
        assert (mask == p.mask.numpy()).mean() > 0.999  # the same up to float ties (the layout may differ)
        counts = np.bincount(mask.ravel(), minlength=len(ckpt.classes))
        assert {c: a["pixels"] for c, a in answer["areas"].items()} == {
            ckpt.classes[i]: int(counts[i]) for i in np.nonzero(counts)[0]}
        assert sum(a["share"] for a in answer["areas"].values()) == pytest.approx(1.0)
        assert answer["top"] == [{"class": c, "area": a["share"]} for c, a in answer["areas"].items()][:2]
    again = seg_client.post("/v1/models/tiny/predict",
                            json={"images": [base64.b64encode(f.read_bytes()).decode() for f in scene_files]})
    assert [a["mask"] for a in again.json()["predictions"]] == [a["mask"] for a in served]
    card = seg_client.get("/v1/models/tiny").json()
    assert "masks answered at the image's size" in card["input"]["dtype"]


def test_bad_requests_get_a_4xx_json_line(seg_client, scene_files):
    one = [("file", (scene_files[0].name, scene_files[0].read_bytes()))]
    for status, kwargs, path in (
            (415, {"files": [("file", ("x.png", b"not an image at all"))]}, "predict"),
            (422, {"files": [("file", ("t.png", scene_files[0].read_bytes()[:60]))]}, "predict"),
            (422, {"files": [("file", ("e.png", b""))]}, "predict"),
            (422, {"files": one, "params": {"topk": 0}}, "predict"),
            (413, {"files": one * 9}, "predict"),
            (422, {"files": one}, "explain")):
        r = seg_client.post(f"/v1/models/tiny/{path}", **kwargs)
        assert r.status_code == status, (status, r.text)
        message = r.json()["error"]["message"]
        assert message and "\n" not in message and "Traceback" not in message


def test_predict_url_writes_the_masks_predict_writes_here(seg_run, scene_files, tmp_path, capsys):
    from cnnkit.cli import main
    from tests.serve.running import running_service

    files = [str(f) for f in scene_files]
    with running_service(f"seg={seg_run.run_dir}") as url:
        assert main(["predict", "--url", f"{url}/v1/models/seg", *files, "--masks-out", str(tmp_path / "remote"),
                     "--json"]) == 0
        remote_rows = json.loads(capsys.readouterr().out)
    assert main(["predict", "--checkpoint", str(seg_run.run_dir), *files, "--masks-out", str(tmp_path / "local"),
                 "--json"]) == 0
    local_rows = json.loads(capsys.readouterr().out)
    remote = json.loads((tmp_path / "remote" / "areas.json").read_text())
    local = json.loads((tmp_path / "local" / "areas.json").read_text())
    assert remote["classes"] == local["classes"] and remote["palette"] == local["palette"]
    for r, h, rrow, hrow in zip(remote["images"], local["images"], remote_rows, local_rows):
        assert (r["image"], r["height"], r["width"]) == (h["image"], h["height"], h["width"])
        assert (rrow["height"], rrow["width"], rrow["image"]) == (hrow["height"], hrow["width"], hrow["image"])
        a = np.array(Image.open(tmp_path / "remote" / r["mask"]))
        b = np.array(Image.open(tmp_path / "local" / h["mask"]))
        assert a.shape == b.shape == (h["height"], h["width"]) and (a == b).mean() > 0.999
        assert Image.open(tmp_path / "remote" / r["overlay"]).size == (h["width"], h["height"])


def test_the_explorer_shows_a_segmentation_network_its_mask_and_seg_grad_cam(seg_client, seg_run, tmp_path):
    """The explorer on a U-Net: its graph traced with the skip concatenations, the functional max pooling and the
    transposed convolutions; the overview's mask equals the argmax of the network's own output; the scores are the
    classes' shares of the pixels; "why" is Seg-Grad-CAM over the pixels predicted as the class (equal to
    `cnnkit.explain` with that region) with deletion and insertion curves; a classifier's method is refused in one
    line; the gallery gives each test scene's pixel accuracy; a static export holds it all."""
    import torch

    from cnnkit.artifacts import load
    from cnnkit.data import Normalize
    from cnnkit.explain.cam import explain, largest_class, predicted_region
    from cnnkit.serve import load_models
    from cnnkit.serve.explore import Explorer, export_site

    c = seg_client
    g = c.get("/v1/models/tiny/explore/graph").json()
    assert g["traced"] and g["task"] == "segment" and len(g["palette"]) == len(g["classes"])
    cats = [n for n in g["nodes"] if n["kind"] == "cat"]
    assert len(cats) == 2 and all(len(n["inputs"]) == 2 for n in cats)  # depth 2: two skips
    assert {n["kind"] for n in g["nodes"]} >= {"conv", "bn", "act", "pool", "upconv", "cat"}
    gallery = c.get("/v1/models/tiny/explore/gallery").json()["images"]
    assert gallery and all(i["label"] is None and 0 <= i["pixel_accuracy"] <= 1 for i in gallery)
    key = gallery[0]["id"]
    ov = c.get(f"/v1/models/tiny/explore/images/{key}").json()
    ckpt = load(seg_run.run_dir)
    raw = torch.from_numpy(np.array(Image.open(io.BytesIO(base64.b64decode(gallery[0]["png"])))))[None, None]
    x = Normalize(*ckpt.normalization)(raw)
    with torch.no_grad():
        logits = ckpt.model.eval()(x)
    mask = np.array(Image.open(io.BytesIO(base64.b64decode(ov["output"]["png"]))))
    np.testing.assert_array_equal(mask, logits[0].argmax(0).numpy())
    shares = np.bincount(mask.flatten(), minlength=len(g["classes"])) / mask.size
    np.testing.assert_allclose(ov["probabilities"], shares, atol=1e-6)
    assert ov["predicted"] == int(largest_class(logits)[0])
    pool = next(n["id"] for n in g["nodes"] if n["kind"] == "pool")
    d = c.get(f"/v1/models/tiny/explore/images/{key}/nodes/{pool}/channels/0").json()
    assert d["node"]["params"]["kernel"] == [2, 2] and d["node"]["params"]["ceil_mode"] is True
    target = ov["predicted"]
    w = c.get(f"/v1/models/tiny/explore/images/{key}/why", params={"method": "gradcam"}).json()
    assert "error" not in w and w["target"] == target and len(w["deletion_curve"]) == len(w["insertion_curve"]) == 25
    region = predicted_region(logits, torch.tensor([target]))
    ref = explain(ckpt.model, x, [target], method="gradcam", region=region).maps[0]
    got = np.frombuffer(base64.b64decode(w["map"]), np.uint8).reshape(w["height"], w["width"]) / 255
    np.testing.assert_allclose(got, ref.clamp(0, 1).numpy(), atol=1 / 255 + 1e-6)
    assert 0 <= w["deletion"] <= 1 and w["deletion_curve"][0] == pytest.approx(
        float((torch.softmax(logits, 1)[0, target] * region[0]).sum() / region.sum()), abs=1e-3)
    refused = c.get(f"/v1/models/tiny/explore/images/{key}/why", params={"method": "lrp"}).json()
    assert "Seg-Grad-CAM" in refused["error"] and "\n" not in refused["error"]
    m = load_models([f"tiny={seg_run.run_dir}"], device="cpu")["tiny"]
    html = export_site(Explorer(m), tmp_path / "site", images=1).read_text()
    data = json.loads(html.split('<script id="cnnkit-data" type="application/json">')[1].split("</script>")[0]
                      .replace("<\\/", "</"))
    assert [k.split("method=")[1] for k in data["answers"] if "/why?" in k] == ["gradcam", "gradcam%2B%2B"]
