"""The service with a restoration model: one image in, the restored image out as a PNG, equal to what `cnnkit
predict` writes; requests of one size batched together; bad requests 4xx; `cnnkit predict --url --images-out`
writing what `predict --images-out` writes. All traffic goes to 127.0.0.1 (a TestClient, and one real server
process)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def sr_checkpoint(tmp_path_factory):
    from tests.tasks.test_restore import _restore_checkpoint

    return _restore_checkpoint(tmp_path_factory.mktemp("served-sr") / "run", "espcn",
                               {"scale": 3, "n1": 8, "n2": 4})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("served-photos")
    sizes = (((40, 30), "RGB", "png"), ((40, 30), "L", "png"), ((23, 51), "RGB", "jpg"))
    out = []
    for i, (size, mode, ext) in enumerate(sizes):
        out.append(folder / f"photo{i}.{ext}")
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).convert(mode).save(out[-1])
    return out


@pytest.fixture(scope="module")
def sr_client(sr_checkpoint):
    from tests.serve.test_serve import make_client

    c = make_client(sr_checkpoint, max_images=8)
    yield c
    c.__exit__(None, None, None)


def test_served_images_equal_predicts_files(sr_client, sr_checkpoint, photos, tmp_path):
    from cnnkit.evaluate import predict

    predict(sr_checkpoint, photos, images_out=tmp_path / "local", device="cpu")
    card = sr_client.get("/v1/models/tiny").json()
    assert card["task"] == "restore" and card["restoration"]["scale"] == 3
    for f in photos:
        r = sr_client.post("/v1/models/tiny/predict", content=f.read_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        assert r.headers["x-cnnkit-scale"] == "3"
        served = np.asarray(Image.open(io.BytesIO(r.content)))
        here = np.asarray(Image.open(tmp_path / "local" / f"{f.stem}.png"))
        w, h = Image.open(f).size
        assert served.shape == here.shape == (3 * h, 3 * w, 3) and np.array_equal(served, here)
    batchers = {k[2] for k in sr_client.app.state.service.batchers if k[0] == "tiny"}
    assert {"restore@30x40x3", "restore@51x23x3"} <= batchers  # one per size: same-size requests batch together


def test_bad_restoration_requests_are_4xx(sr_client, photos, monkeypatch):
    import cnnkit.evaluate.restore as restore

    two = [("file", (f.name, f.read_bytes())) for f in photos[:2]]
    r = sr_client.post("/v1/models/tiny/predict", files=two)
    assert r.status_code == 422 and "one image per request" in r.json()["error"]["message"]
    r = sr_client.post("/v1/models/tiny/predict", content=b"not an image", headers={"content-type": "image/png"})
    assert 400 <= r.status_code < 500
    monkeypatch.setattr(restore, "MAX_OUTPUT_PIXELS", 40 * 30 * 9 - 1)
    r = sr_client.post("/v1/models/tiny/predict", content=photos[0].read_bytes(),
                       headers={"content-type": "image/png"})
    assert r.status_code == 413 and "more than" in r.json()["error"]["message"]
    r = sr_client.post("/v1/models/tiny/explain", files=two[:1])  # (the explorer shows it: see below)
    assert r.status_code == 422 and "restoration model" in r.json()["error"]["message"], r.text


def test_predict_url_writes_the_images_predict_writes_here(sr_checkpoint, photos, tmp_path, capsys):
    from cnnkit.cli import main
    from tests.serve.running import running_service

    files = [str(f) for f in photos]
    with running_service(f"sr={sr_checkpoint}") as url:
        assert main(["predict", "--url", f"{url}/v1/models/sr", *files, "--images-out", str(tmp_path / "remote"),
                     "--json"]) == 0
        remote_rows = json.loads(capsys.readouterr().out)
        assert main(["predict", "--url", f"{url}/v1/models/sr", *files]) == 2
        assert "give --images-out" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(sr_checkpoint), *files, "--images-out", str(tmp_path / "local"),
                 "--json"]) == 0
    local_rows = json.loads(capsys.readouterr().out)
    for r, h in zip(remote_rows, local_rows):
        assert (r["height"], r["width"]) == (h["height"], h["width"])
        a, b = (np.asarray(Image.open(row["restored"])) for row in (r, h))
        assert np.array_equal(a, b)
    assert json.loads((tmp_path / "remote" / "restored.json").read_text())["service"] == f"{url}/v1/models/sr"


def test_the_explorer_shows_a_restoration_network_and_where_its_pixels_come_from(sr_client, sr_checkpoint, tmp_path):
    """The explorer on ESPCN (×3): its graph ends in the pixel shuffle; the gallery holds test-photograph crops
    shrunk as in training, captioned with the restored and bicubic PSNR; the overview's restored image is the one
    `cnnkit predict` makes of that input; "why" maps the input pixels a box of the restored image depends on, and
    nothing outside the box's receptive field (the network's radius around it) counts; a bad box is refused in one
    line; an upload is explored at most 128 pixels a side; a static export holds the centre box's maps."""
    import torch

    from cnnkit.artifacts import load
    from cnnkit.evaluate.restore import restore_pixels
    from cnnkit.serve import load_models
    from cnnkit.serve.explore import Explorer, export_site
    from cnnkit.tasks.restore import restoration_net

    c = sr_client
    g = c.get("/v1/models/tiny/explore/graph").json()
    assert g["traced"] and g["task"] == "restore" and [n["kind"] for n in g["nodes"]][-1] == "shuffle"
    gallery = c.get("/v1/models/tiny/explore/gallery").json()["images"]
    assert len(gallery) == 15 and all(i["baseline"] == "bicubic" and i["baseline_psnr"] > i["psnr"] for i in gallery)
    key, given = gallery[0]["id"], np.array(Image.open(io.BytesIO(base64.b64decode(gallery[0]["png"]))))
    assert given.shape == (32, 32, 3)  # a 96-pixel crop shrunk ×3
    ov = c.get(f"/v1/models/tiny/explore/images/{key}").json()
    assert ov["output"]["scale"] == 3 and (ov["output"]["height"], ov["output"]["width"]) == (96, 96)
    net = load(sr_checkpoint).model.eval()
    expected = restore_pixels(net, torch.from_numpy(given).permute(2, 0, 1)[None], 3)[0].permute(1, 2, 0).numpy()
    shown = np.array(Image.open(io.BytesIO(base64.b64decode(ov["output"]["png"]))))
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1
    radius = restoration_net(net).radius
    for method in ("saliency", "integrated_gradients"):
        w = c.get(f"/v1/models/tiny/explore/images/{key}/why", params={"method": method, "region": "30,30,39,39"}).json()
        assert "error" not in w and w["region"] == [30, 30, 39, 39] and (w["height"], w["width"]) == (32, 32)
        m = np.frombuffer(base64.b64decode(w["map"]), np.uint8).reshape(32, 32)
        ys, xs = np.nonzero(m)
        assert len(ys) and ys.min() >= 10 - radius and ys.max() <= 12 + radius and xs.min() >= 10 - radius
        assert xs.max() <= 12 + radius, (method, ys.min(), ys.max(), xs.min(), xs.max())
    r = c.get(f"/v1/models/tiny/explore/images/{key}/why", params={"method": "saliency", "region": "0,0,200,5"})
    assert r.status_code == 422 and "not inside the 96×96" in r.json()["error"]["message"]
    assert "explained by saliency" in c.get(f"/v1/models/tiny/explore/images/{key}/why",
                                            params={"method": "gradcam"}).json()["error"]
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 40, 90)).save(buf, "PNG")
    up = c.post("/v1/models/tiny/explore/images", files={"file": ("a.png", buf.getvalue())}).json()
    assert (up["input"]["height"], up["input"]["width"]) == (96, 128) and up["output"]["width"] == 384
    m = load_models([f"tiny={sr_checkpoint}"], device="cpu")["tiny"]
    html = export_site(Explorer(m), tmp_path / "site", images=1).read_text()
    assert html.count('/why?method=saliency"') + html.count("/why?method=saliency\\\"") >= 1
    assert '/why?method=integrated_gradients' in html
