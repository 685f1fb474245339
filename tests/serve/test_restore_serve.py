"""The service with a restoration model: one image in, the restored image out as a PNG, equal to what `cnnkit
predict` writes; requests of one size batched together; bad requests 4xx; `cnnkit predict --url --images-out`
writing what `predict --images-out` writes. All traffic goes to 127.0.0.1 (a TestClient, and one real server
process)."""

from __future__ import annotations

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
    for path in ("/v1/models/tiny/explain", "/v1/models/tiny/explore/images"):
        r = sr_client.post(path, files=two[:1])
        assert r.status_code == 422 and "restoration model" in r.json()["error"]["message"], (path, r.text)


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
