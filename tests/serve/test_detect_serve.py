"""The service with a detection model, in a real server process on loopback serving a briefly trained FCOS's
run directory and its ONNX file: each image's detections equal to `cnnkit predict --json`'s for the same
image and artifact (boxes in the image's own pixels, a non-square image's scaled back from the stretched
input), the images of a request in one batch (the ONNX graph runs them one by one inside it), bad requests
4xx; `cnnkit bench` on the run and the ONNX file; the serve options refused in one line."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from tests.deploy.test_detect_export import briefly_trained, load_scenes, normalized

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """The run, its ONNX file (score threshold 0.01 inside), three scenes the model never saw as files (96×96
    gray PNG, 192×192 RGB PNG, 150×90 gray JPEG) and an answer threshold that leaves several detections."""
    from cnnkit.deploy import export_onnx

    root, scenes = tmp_path_factory.mktemp("served-boxes"), load_scenes()
    ckpt = briefly_trained("fcos_small", scenes, root / "run")
    onnx = export_onnx(ckpt, root / "boxes.onnx", score_threshold=0.01).path
    files = []
    for i, (size, mode, ext) in enumerate((((96, 96), "L", "png"), ((192, 192), "RGB", "png"),
                                           ((150, 90), "L", "jpg"))):
        files.append(root / f"scene{i}.{ext}")
        Image.fromarray(scenes["images"][5 + i, 0].numpy(), "L").resize(size).convert(mode).save(files[-1])
    ckpt.model.set_postprocess(score_threshold=0.01)
    with torch.no_grad():
        scores = ckpt.model(normalized(scenes["images"][5:6], scenes["normalization"]))[0, :, 4]
    threshold = round(float(scores[15]) - 1e-3, 3)  # some 15 detections on the first image
    return {"run": root / "run", "onnx": onnx, "files": files, "threshold": threshold, "ckpt": ckpt}


@pytest.fixture(scope="module")
def server(det):
    from tests.serve.running import running_service

    with running_service(f"ck={det['run']}", f"ox={det['onnx']}", "--score-threshold", str(det["threshold"]),
                         "--max-images", "4", ready_s=90) as url:
        yield url


def batches(url: str, model: str) -> tuple[float, float]:
    """(forward passes, images) the model's predict batcher has run so far."""
    import httpx

    text = httpx.get(f"{url}/metrics").text
    found = [re.search(rf'cnnkit_batch_images_{what}\{{kind="predict",model="{model}"\}} (\S+)', text)
             for what in ("count", "sum")]
    return tuple(float(m.group(1)) if m else 0.0 for m in found)


def same_detections(a: list[dict], b: list[dict], tol: float) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x["class"] == y["class"] and abs(x["score"] - y["score"]) <= 1e-3, (x, y)
        assert max(abs(u - v) for u, v in zip(x["box"], y["box"])) <= tol, (x, y)


def test_served_boxes_equal_predicts_for_the_checkpoint_and_the_onnx_file(server, det, capsys):
    from cnnkit.cli import main
    from cnnkit.serve.client import Client

    files = [str(f) for f in det["files"]]
    answers = {}
    for name, artifact in (("ck", det["run"]), ("ox", det["onnx"])):
        before = batches(server, name)
        with Client(f"{server}/v1/models/{name}") as c:
            served = answers[name] = c.predict(det["files"])
        after = batches(server, name)
        assert (after[0] - before[0], after[1] - before[1]) == (1, 3)  # one batch of three
        assert main(["predict", "--checkpoint", str(artifact), *files, "--json", "--score-threshold",
                     str(det["threshold"])]) == 0
        local = json.loads(capsys.readouterr().out)
        for s, h, f in zip(served, local, det["files"]):  # predict stretches every image as the service does
            assert s["image"] == f.name and (s["height"], s["width"]) == (h["height"], h["width"])
            same_detections(s["top"], h["top"], 1e-3)
        # `predict --url` prints the service's answers with each image's size, as predict here does
        assert main(["predict", "--url", f"{server}/v1/models/{name}", *files, "--json"]) == 0
        remote = json.loads(capsys.readouterr().out)
        assert [(r["height"], r["width"], r["top"]) for r in remote] == [(s["height"], s["width"], s["top"])
                                                                          for s in served]
        assert len(served[0]["top"]) >= 15 and all(s["top"] for s in served)
        assert all(d["score"] >= det["threshold"] for s in served for d in s["top"])
    # the non-square image: the checkpoint's boxes on it stretched to 96×96, scaled back to 150×90
    from cnnkit.data import Normalize
    from cnnkit.data.images import load_image_file
    from cnnkit.evaluate.masks import model_input

    ckpt = det["ckpt"]
    ckpt.model.set_postprocess(score_threshold=det["threshold"])
    x = Normalize(*ckpt.normalization)(model_input(load_image_file(det["files"][2]), 1, (96, 96))[None])
    with torch.no_grad():
        rows = ckpt.model.eval()(x)[0]
    rows = rows[(rows[:, 5] >= 0) & (rows[:, 4] >= det["threshold"])]
    boxes = (rows[:, :4] * torch.tensor([150 / 96, 90 / 96] * 2)).clamp_min(0)
    boxes = boxes.minimum(torch.tensor([150.0, 90, 150, 90]))
    expected = [{"class": ckpt.classes[int(r[5])], "score": float(r[4]), "box": b.tolist()}
                for r, b in zip(rows, boxes)]
    same_detections(answers["ck"][2]["top"], expected, 1e-2)  # the served boxes are rounded to 0.01 pixel


def test_bad_requests_get_a_4xx_json_line(server, det):
    import httpx

    one = [("file", (det["files"][0].name, det["files"][0].read_bytes()))]
    for status, kwargs, path in (
            (415, {"files": [("file", ("x.png", b"not an image at all"))]}, "predict"),
            (422, {"files": [("file", ("e.png", b""))]}, "predict"),
            (422, {"files": one, "params": {"topk": 0}}, "predict"),
            (413, {"files": one * 5}, "predict"),
            (422, {"files": one}, "explain")):
        for model in ("ck", "ox"):
            r = httpx.post(f"{server}/v1/models/{model}/{path}", **kwargs)
            assert r.status_code == status, (status, model, r.text)
            message = r.json()["error"]["message"]
            assert message and "\n" not in message and "Traceback" not in message
    r = httpx.get(f"{server}/v1/models/ox/explore/graph")  # an ONNX file has no layers to show
    assert r.status_code == 422 and "exported artifact" in r.json()["error"]["message"]
    card = httpx.get(f"{server}/v1/models/ox").json()
    assert card["detection"]["score_threshold"] == det["threshold"] and card["detection"]["graph_batch"] == 1
    assert "boxes answered in the image's pixels" in card["input"]["dtype"]


def test_serve_options_are_refused_in_one_line(det, capsys):
    from cnnkit.cli import main
    from cnnkit.errors import ConfigError
    from cnnkit.serve import load_models

    with pytest.raises(ConfigError, match="exported graph with its suppression inside"):
        load_models([f"ox={det['onnx']}"], "cpu", nms_iou=0.4, measure_layout=False)
    assert main(["serve", str(det["run"]), "--score-threshold", "2", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--score-threshold is a fraction from 0 to 1" in err and len(err.splitlines()) == 1


def test_bench_measures_the_run_and_the_onnx_file_at_a_given_size(det, capsys, monkeypatch):
    from cnnkit.cli import main
    from tests.conftest import stub_peak_memory

    stub_peak_memory(monkeypatch)
    assert main(["bench", str(det["run"]), str(det["onnx"]), "--batch", "2", "--repeats", "3", "--json",
                 "--img-size", "64x128"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in rows] == ["safetensors", "onnx"]
    for r in rows:
        assert r["img_size"] == [64, 128] and r["latency_ms_p50"] > 0 and r["images_per_s"] > 0
        assert r["params"] > 0 and r["throughput_batch"] == 2


def test_the_explorer_shows_a_detector_its_boxes_and_why_one_detection(det, tmp_path):
    """The explorer on FCOS: the backbone and its feature pyramid traced (the pyramid's top-down additions joined);
    the output column's detections are the detector's own above the threshold, best first; "why" explains one of
    them by LayerCAM (equal to `cnnkit.explain`'s) and D-RISE, the curves tracking how well the changed image's
    detections match it (1 × its own score before anything changes); a classifier's method and a detection out of
    range are refused in one line; the gallery counts each scene's objects and detections; an export holds it."""
    import base64
    import io

    import numpy as np
    from fastapi.testclient import TestClient

    from cnnkit.explain.detect import layercam
    from cnnkit.serve import create_app, load_models
    from cnnkit.serve.explore import Explorer, export_site

    models = load_models([f"ck={det['run']}"], device="cpu", score_threshold=det["threshold"])
    with TestClient(create_app(models)) as c:
        g = c.get("/v1/models/ck/explore/graph").json()
        assert g["traced"] and g["task"] == "detect" and g["nodes"][-1]["id"].startswith("fpn_layer_blocks")
        assert any(n["kind"] == "add" and len(n["inputs"]) == 2 for n in g["nodes"])  # the pyramid's top-down joins
        gallery = c.get("/v1/models/ck/explore/gallery").json()["images"]
        assert gallery and all(i["objects"] >= 1 and i["detections"] >= 0 for i in gallery)
        key = gallery[0]["id"]
        ov = c.get(f"/v1/models/ck/explore/images/{key}").json()
        raw = torch.from_numpy(np.array(Image.open(io.BytesIO(base64.b64decode(gallery[0]["png"])))))
        x = normalized(raw[None, None], det["ckpt"].meta["normalization"])
        net = det["ckpt"].model.eval()
        net.set_postprocess(score_threshold=det["threshold"])
        with torch.no_grad():
            expected = net(x)[0]
        expected = expected[expected[:, 5] >= 0]
        got = torch.tensor(ov["output"]["detections"])
        assert len(got) == len(expected) > 1
        torch.testing.assert_close(got[:, :4], expected[:, :4], atol=0.01, rtol=0)
        assert got[:, 5].tolist() == expected[:, 5].tolist() and got[:, 4].tolist() == sorted(got[:, 4].tolist(), reverse=True)
        w = c.get(f"/v1/models/ck/explore/images/{key}/why", params={"method": "layercam", "detection": 1}).json()
        assert "error" not in w and w["detection"] == 1 and w["class"] == det["ckpt"].classes[int(expected[1, 5])]
        ref = layercam(net, x, torch.tensor([1])).maps[0]
        shown = np.frombuffer(base64.b64decode(w["map"]), np.uint8).reshape(w["height"], w["width"]) / 255
        np.testing.assert_allclose(shown, ref.numpy(), atol=1 / 255 + 1e-6)
        assert w["deletion_curve"][0] == pytest.approx(float(expected[1, 4]), abs=2e-3)  # itself: IoU 1, same class
        d = c.get(f"/v1/models/ck/explore/images/{key}/why", params={"method": "drise", "detection": 0}).json()
        assert "error" not in d and len(d["insertion_curve"]) == 25
        bad = c.get(f"/v1/models/ck/explore/images/{key}/why", params={"method": "layercam", "detection": 999}).json()
        assert "out of range" in bad["error"] and "--" not in bad["error"]
        assert "layercam or drise" in c.get(f"/v1/models/ck/explore/images/{key}/why",
                                            params={"method": "gradcam"}).json()["error"]
    html = export_site(Explorer(models["ck"]), tmp_path / "site", images=1).read_text()
    assert "/why?detection=0&method=layercam" in html and "/why?detection=0&method=drise" in html
