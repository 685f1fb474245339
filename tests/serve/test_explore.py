"""The explorer's API against PyTorch itself: the graph and its joins, activations (quantized pages that cover
every channel), the numbers of the elastic and formula views, explanations against `cnnkit.explain`, every model
family, errors, and the static export. The page in a real browser: test_explore_browser.py."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from tests.cli.test_cli import run

pytest.importorskip("fastapi")

# the API on each kind of layer these families have (TinyVGG, MobileNetV2 and ConvNeXt run in the browser tests)
FAMILIES = ["preact_resnet20", "inception_v4_mini", "inception_next_mini", "timm/resnet18"]


def f32(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["f32"]), "<f4").reshape(d["shape"])


def png_bytes(sample_train, i: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(sample_train.images[i, 0].numpy(), "L").save(buf, "PNG")
    return buf.getvalue()


def family_checkpoint(base_meta: dict, family: str, folder: Path) -> Path:
    """An untrained checkpoint of `family` at a size it accepts, with the sample's classes."""
    from cnnkit.artifacts import save_checkpoint
    from cnnkit.models import create

    size = 64 if family == "tinyvgg" else 32
    torch.manual_seed(0)
    model = create(family, num_classes=10, in_chans=3).eval()
    path = folder / f"{family.replace('/', '-')}.safetensors"
    save_checkpoint(path, model, {**base_meta, "model": family, "model_kwargs": {}, "img_size": [size, size],
                                  "in_chans": 3})
    return path


@pytest.fixture(scope="module")
def client(trained_run):
    from tests.serve.test_serve import make_client

    c = make_client(trained_run.run_dir)
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def uploaded(client, sample_train):
    r = client.post("/v1/models/tiny/explore/images", files={"file": ("shoe.png", png_bytes(sample_train, 0))})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def reference(trained_run, sample_train):
    """The checkpoint, the normalized input, and every module's output from forward hooks (independent of fx)."""
    from cnnkit.artifacts import load
    from cnnkit.data import Normalize

    ckpt = load(trained_run.run_dir)
    x = Normalize(*ckpt.normalization)(sample_train.images[:1])
    outs, ins = {}, {}

    def record(name):
        def hook(_m, i, o):  # returns None: the output is left as it is
            outs.setdefault(name, o.detach().clone())  # before an in-place ReLU changes it
            ins.setdefault(name, i[0].detach().clone())
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in ckpt.model.named_modules() if n]
    with torch.no_grad():
        logits = ckpt.model(x)
    for h in hooks:
        h.remove()
    return ckpt, x, logits, outs, ins


def test_graph_is_the_traced_network_with_its_residual_joins(client, reference):
    g = client.get("/v1/models/tiny/explore/graph").json()
    ckpt = reference[0]
    assert g["traced"] and g["classes"] == ckpt.classes
    nodes = {n["id"]: n for n in g["nodes"]}
    assert g["nodes"][0]["kind"] == "input" and nodes[g["output"]]["shape"] == [10]
    adds = [n for n in g["nodes"] if n["kind"] == "add"]
    assert len(adds) == 2 and all(len(n["inputs"]) == 2 for n in adds)  # ResNet-9's two residual blocks
    convs = [n for n in g["nodes"] if n["kind"] == "conv"]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in ckpt.model.modules())
    for n in convs:  # each conv's shape and parameters are the module's own
        m = ckpt.model.get_submodule(n["label"])
        assert n["shape"] == list(reference[3][n["label"]].shape[1:]) and n["params"]["kernel"] == list(m.kernel_size)
    order = [n["id"] for n in g["nodes"]]
    assert all(order.index(i) < order.index(n["id"]) for n in g["nodes"] for i in n["inputs"])  # topological


def test_overview_matches_pytorch_and_pages_cover_every_channel(client, uploaded, reference):
    ckpt, x, logits, outs, _ = reference
    np.testing.assert_allclose(uploaded["logits"], logits[0].numpy(), atol=1e-5)
    assert uploaded["predicted"] == int(logits.argmax())
    g = client.get("/v1/models/tiny/explore/graph").json()
    conv = next(n for n in g["nodes"] if n["kind"] == "conv" and n["shape"][0] > 8)
    page0 = uploaded["nodes"][conv["id"]]
    want = outs[conv["label"]][0]
    assert page0["channels"] == want.shape[0] and page0["pages"] == -(-want.shape[0] // 8)
    q = np.frombuffer(base64.b64decode(page0["data"]), np.uint8).reshape(-1, *want.shape[1:])
    for k, ch in enumerate(page0["order"]):  # dequantized maps equal the activations to one step of 255
        lo, hi = page0["lo"][k], page0["hi"][k]
        np.testing.assert_allclose(lo + q[k] / 255 * (hi - lo), want[ch].numpy(), atol=(hi - lo) / 254 + 1e-6)
    means = want.flatten(1).mean(1)
    assert means[page0["order"][0]] == means.max()  # most active first
    seen = list(page0["order"])
    for p in range(1, page0["pages"]):
        seen += client.get(f"/v1/models/tiny/explore/images/{uploaded['image']}/nodes/{conv['id']}?page={p}").json()["order"]
    assert sorted(seen) == list(range(want.shape[0]))
    by_number = client.get(f"/v1/models/tiny/explore/images/{uploaded['image']}?order=index").json()
    assert by_number["nodes"][conv["id"]]["order"] == list(range(8))  # channel order: a row is a channel
    page1 = client.get(f"/v1/models/tiny/explore/images/{uploaded['image']}/nodes/{conv['id']}?page=1&order=index")
    assert page1.json()["order"] == list(range(8, min(16, want.shape[0])))
    # the input as the model sees it
    im = Image.open(io.BytesIO(base64.b64decode(uploaded["input"]["png"])))
    assert im.size == (28, 28) and uploaded["input"]["channels"] == 1
    assert uploaded["input"]["min"] == pytest.approx(float(x.min()), abs=1e-5)


def test_elastic_conv_numbers_reproduce_pytorch(client, uploaded, reference):
    """The inputs, kernel slice and bias sent for a channel give PyTorch's own output at every position, and
    the BatchNorm and ReLU written after it give the block's output."""
    ckpt, x, _, outs, ins = reference
    g = client.get("/v1/models/tiny/explore/graph").json()
    conv = next(n for n in g["nodes"] if n["kind"] == "conv" and n["label"].startswith("layer1"))
    d = client.get(f"/v1/models/tiny/explore/images/{uploaded['image']}/nodes/{conv['id']}/channels/3").json()
    inp, w, out = f32(d["input"]), f32(d["weight"]), f32(d["output"])
    np.testing.assert_allclose(inp, ins[conv["label"]][0].numpy(), atol=1e-6)
    m = ckpt.model.get_submodule(conv["label"])
    np.testing.assert_allclose(w, m.weight[3].detach().numpy(), atol=0)
    padded = np.pad(inp, ((0, 0), *[(p, p) for p in d["padding"]]))
    kh, kw = w.shape[1:]
    by_hand = np.array([[np.sum(padded[:, y:y + kh, x:x + kw] * w) + d["bias"] for x in range(out.shape[1])]
                        for y in range(out.shape[0])])
    np.testing.assert_allclose(by_hand, outs[conv["label"]][0, 3].numpy(), atol=1e-4)
    np.testing.assert_allclose(out, outs[conv["label"]][0, 3].numpy(), atol=1e-6)
    bn, act = d["chain"]
    assert bn["kind"] == "bn" and act == {**act, "kind": "act", "function": "relu"}
    y = np.maximum((by_hand - bn["mean"]) / np.sqrt(bn["var"] + bn["eps"]) * bn["gamma"] + bn["beta"], 0)
    np.testing.assert_allclose(y, f32(act["output"]), atol=1e-4)


def test_formula_views_carry_their_numbers(client, uploaded, reference):
    ckpt, x, logits, outs, ins = reference
    g = client.get("/v1/models/tiny/explore/graph").json()
    base = f"/v1/models/tiny/explore/images/{uploaded['image']}/nodes"
    linear = next(n for n in g["nodes"] if n["kind"] == "linear")
    d = client.get(f"{base}/{linear['id']}/channels/4").json()
    assert np.dot(f32(d["input"]), f32(d["weight"])) + d["bias"] == pytest.approx(float(f32(d["output"])[0]), abs=1e-4)
    pool = next(n for n in g["nodes"] if n["kind"] == "pool")
    d = client.get(f"{base}/{pool['id']}/channels/0").json()
    k, s = pool["params"]["kernel"], pool["params"]["stride"]
    want = F.max_pool2d(torch.tensor(f32(d["input"][0]))[None], k, s)[0].numpy()
    np.testing.assert_allclose(f32(d["output"]), want, atol=0)
    add = next(n for n in g["nodes"] if n["kind"] == "add")
    d = client.get(f"{base}/{add['id']}/channels/2").json()
    np.testing.assert_allclose(sum(f32(t) for t in d["input"]), f32(d["output"]), atol=1e-5)
    bn = next(n for n in g["nodes"] if n["kind"] == "bn")
    d = client.get(f"{base}/{bn['id']}/channels/1").json()
    y = (f32(d["input"][0]) - d["mean"]) / np.sqrt(d["var"] + d["eps"]) * d["gamma"] + d["beta"]
    np.testing.assert_allclose(y, f32(d["output"]), atol=1e-4)


def test_why_this_class_equals_offline_explain_and_deletion_insertion(client, uploaded, reference):
    from cnnkit.explain.cam import explain
    from cnnkit.explain.metrics import deletion_insertion

    ckpt, x, *_ = reference
    r = client.get(f"/v1/models/tiny/explore/images/{uploaded['image']}/why",
                   params={"target": "Trouser", "method": "gradcam++"}).json()
    assert r["target"] == 1 and r["class"] == "Trouser" and r["method"] == "gradcam++"
    q = np.frombuffer(base64.b64decode(r["map"]), np.uint8).reshape(r["height"], r["width"]) / 255
    ref = explain(ckpt.model, x, [1], method="gradcam++")
    np.testing.assert_allclose(q, ref.maps[0].numpy(), atol=1 / 255 + 1e-6)
    s = deletion_insertion(ckpt.model, x, ref.maps, torch.tensor([1]), steps=24)
    assert r["deletion"] == pytest.approx(float(s["deletion"][0]), abs=2e-3)
    assert r["insertion"] == pytest.approx(float(s["insertion"][0]), abs=2e-3)


def test_gallery_marks_misclassified_test_images(client, trained_run):
    from cnnkit.evaluate import evaluate

    g = client.get("/v1/models/tiny/explore/gallery").json()
    items = g["images"]
    assert 0 < len(items) <= 24 and any(not i["correct"] for i in items)
    res = evaluate(trained_run.run_dir)
    pred = res.probs.argmax(1)
    for i in items:
        assert i["label"] == int(res.labels[i["index"]]) and i["predicted"] == int(pred[i["index"]])
        assert i["correct"] == (i["label"] == i["predicted"])
    ov = client.get(f"/v1/models/tiny/explore/images/{items[0]['id']}").json()  # gallery ids explore directly
    assert ov["predicted"] == items[0]["predicted"]


@pytest.mark.parametrize("what,path,status", [
    ("unknown image", "images/0123456789abcdef", 404),
    ("unknown layer", "images/{id}/nodes/nope?page=0", 404),
    ("page past the end", "images/{id}/nodes/{conv}?page=999", 404),
    ("channel past the end", "images/{id}/nodes/{conv}/channels/999", 404),
    ("channel not a number", "images/{id}/nodes/{conv}/channels/x", 422),
    ("unknown method", "images/{id}/why?method=magic", 422),
    ("unknown class", "images/{id}/why?target=Spaceship", 422),
    ("topk out of range", "images/{id}?topk=0", 422),
    ("unknown channel order", "images/{id}?order=random", 422),
    ("unknown model", "../nope/explore/graph", 404),
])
def test_bad_explorer_requests_answer_4xx_with_one_line(client, uploaded, what, path, status):
    g = client.get("/v1/models/tiny/explore/graph").json()
    conv = next(n["id"] for n in g["nodes"] if n["kind"] == "conv")
    r = client.get("/v1/models/tiny/explore/" + path.format(id=uploaded["image"], conv=conv))
    assert r.status_code == status, (what, r.text)
    message = r.json()["error"]["message"]
    assert message and "\n" not in message and "Traceback" not in message


def test_exported_artifacts_are_refused_with_the_reason(tmp_path, trained_run):
    from fastapi.testclient import TestClient

    from cnnkit.deploy import export_onnx
    from cnnkit.serve import create_app, load_models

    onnx = export_onnx(trained_run.run_dir, tmp_path / "m.onnx").path
    with TestClient(create_app(load_models([f"x={onnx}"], device="cpu"))) as c:
        r = c.get("/v1/models/x/explore/graph")
        assert r.status_code == 422 and "training checkpoint" in r.json()["error"]["message"]
        page = c.get("/")
        assert page.status_code == 200 and "explorer.js" in page.text


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_explores(tmp_path, trained_run, family):
    """Graph, overview and the view of every kind of layer, for each family in the zoo and a timm model."""
    from fastapi.testclient import TestClient

    from cnnkit.artifacts import load
    from cnnkit.serve import create_app, load_models

    path = family_checkpoint(dict(load(trained_run.run_dir).meta), family, tmp_path)
    with TestClient(create_app(load_models([f"m={path}"], device="cpu"))) as c:
        g = c.get("/v1/models/m/explore/graph").json()
        assert g["traced"], g["note"]
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), (200, 40, 90)).save(buf, "PNG")
        ov = c.post("/v1/models/m/explore/images", files={"file": ("a.png", buf.getvalue())}).json()
        ckpt = load(path)
        assert len(ov["logits"]) == 10
        assert set(ov["nodes"]) == {n["id"] for n in g["nodes"]}
        done = set()
        for n in g["nodes"]:
            if n["kind"] in done or n["kind"] == "input":
                continue
            done.add(n["kind"])
            ch = ov["nodes"][n["id"]].get("order", [0])[0]
            r = c.get(f"/v1/models/m/explore/images/{ov['image']}/nodes/{n['id']}/channels/{ch}")
            assert r.status_code == 200, (n, r.text)
        assert {"conv", "linear"} <= done
        for n in (n for n in g["nodes"] if n["kind"] == "flatten"):  # any element, by its own index; none past the end
            assert n["inputs"], n  # (a parameter reshaped is a "const", not a flatten)
            size = ov["nodes"][n["id"]]["size"]
            r = c.get(f"/v1/models/m/explore/images/{ov['image']}/nodes/{n['id']}/channels/{size - 1}").json()
            assert f32(r["input"][0]).tolist() == f32(r["output"]).tolist() and len(f32(r["output"])) == 1
            r = c.get(f"/v1/models/m/explore/images/{ov['image']}/nodes/{n['id']}/channels/{size}")
            assert r.status_code == 404 and f"has {size} elements" in r.json()["error"]["message"]
        w = c.get(f"/v1/models/m/explore/images/{ov['image']}/why", params={"method": "gradcam"}).json()
        assert "error" not in w and w["height"] == w["width"] == ckpt.img_size[0]


def test_untraceable_model_falls_back_to_the_order_layers_run():
    from cnnkit.explain.inside import Inside

    class Branchy(nn.Module):  # control flow on a tensor's value: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.fc = nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 3)

        def forward(self, x):
            y = self.act(self.conv(x))
            if y.sum() > 0:
                y = y * 1
            return self.fc(y.mean((2, 3)))

    m = Branchy().eval()
    x = torch.randn(1, 1, 8, 8)
    ins = Inside(m, x)
    assert not ins.traced and "TraceError" in ins.trace_error
    assert [n.kind for n in ins.nodes] == ["input", "conv", "act", "linear"]
    acts = ins.run(x)
    torch.testing.assert_close(acts[ins.output_id], m(x)[0])


def test_static_export_holds_every_answer_the_page_reads(tmp_path, trained_run, capsys):
    assert run(capsys, "explore", str(trained_run.run_dir), "--export", str(tmp_path / "site"), "--images", "2",
               "--device", "cpu")[0] == 0
    html = (tmp_path / "site" / "index.html").read_text()
    assert 'src="explorer/explorer.js"' not in html  # everything inlined: opens from file://
    blob = html.split('<script id="cnnkit-data" type="application/json">')[1].split("</script>")[0]
    data = json.loads(blob.replace("<\\/", "</"))
    answers = data["answers"]
    ids = [i["id"] for i in answers["gallery"]["images"]]
    assert len(ids) == 2 and data["model"]
    # a correctly classified image first, then a misclassified one (the gallery has both: it keeps a third wrong)
    assert [i["correct"] for i in answers["gallery"]["images"]] == [True, False]
    for key in ids:
        ov = answers[f"images/{key}?topk=8"]
        why = [k for k in answers if k.startswith(f"images/{key}/why?target={ov['predicted']}&")]
        assert len(why) == 6 and f"images/{key}/why?target={ov['predicted']}&method=gradcam%2B%2B" in answers
        conv = next(n["id"] for n in answers["graph"]["nodes"] if n["kind"] == "conv")
        assert all(f"images/{key}/nodes/{conv}/channels/{c}" in answers for c in ov["nodes"][conv]["order"])
    # each tensor's bytes are stored once (a convolution's input is every one of its channels' input) and the
    # export stays under about 2 MB an image: when filed, 4 images of a ResNet-9 took 11.3 MB
    assert '"f32"' not in blob and len(set(data["blobs"])) == len(data["blobs"]) > 100
    assert len(html.encode()) < 2e6 * len(ids), len(html.encode())
    # a second export into the same folder replaces only what cnnkit wrote; other files are kept
    (tmp_path / "site" / "notes.txt").write_text("mine")
    assert run(capsys, "explore", str(trained_run.run_dir), "--export", str(tmp_path / "site"), "--images", "1",
               "--device", "cpu")[0] == 0
    assert (tmp_path / "site" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args,says", [
    (["{tmp}/missing", "--export", "{tmp}/s"], "no such checkpoint"),
    (["{run}", "{run}", "--export", "{tmp}/s"], "one artifact"),
    (["{run}", "--port", "70000"], "65535"),
])
def test_explore_cli_refuses_bad_input_with_one_line(tmp_path, trained_run, capsys, args, says):
    code, out, err = run(capsys, "explore", *[a.format(tmp=tmp_path, run=trained_run.run_dir) for a in args])
    assert code == 2 and says in err and err.strip().count("\n") == 0 and "Traceback" not in err
