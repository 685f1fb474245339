"""The service: endpoints against `cnnkit predict` and `cnnkit.explain` offline, every error status, the token,
the batcher (batches form, pairs kept, queue bound, timeouts) and, in a real server process on loopback,
batching under concurrency, the CLI clients and graceful shutdown with a request in flight."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.serve.batcher import Batcher, QueueFull
from tests.cli.test_error_contract import _png_header

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_train) -> list[Path]:
    """Eight real sample images as files: PNG and JPEG, gray and RGB, various sizes."""
    folder = tmp_path_factory.mktemp("serve-images")
    out = []
    for i in range(8):
        im = Image.fromarray(sample_train.images[i, 0].numpy(), "L")
        if i % 3 == 1:
            im = im.convert("RGB").resize((40, 40))
        path = folder / f"{i}.{'jpg' if i % 4 == 3 else 'png'}"
        im.save(path)
        out.append(path)
    return out


def make_client(run_dir, **options):
    from fastapi.testclient import TestClient

    from cnnkit.serve import ServeOptions, create_app, load_models

    app = create_app(load_models([f"tiny={run_dir}"], device="cpu"), ServeOptions(**options))
    client = TestClient(app)
    client.__enter__()
    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.02)
    return client


@pytest.fixture(scope="module")
def client(trained_run):
    c = make_client(trained_run.run_dir, max_body_mb=1.0, max_pixels=1_000_000, max_images=16)
    yield c
    c.__exit__(None, None, None)


def files_of(paths):
    return [("file", (p.name, p.read_bytes())) for p in paths]


def test_predict_equals_cnnkit_predict_offline_multipart_and_base64(client, trained_run, images):
    from cnnkit.evaluate import predict

    offline = predict(trained_run.run_dir, images, topk=3)
    r = client.post("/v1/models/tiny/predict?topk=3", files=files_of(images))
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [g["image"] for g in got] == [p.name for p in images]
    for g, o in zip(got, offline):
        assert [t["class"] for t in g["top"]] == [c for c, _ in o.top]
        np.testing.assert_allclose([t["probability"] for t in g["top"]], [v for _, v in o.top], atol=1e-5)
    b64 = {"images": [base64.b64encode(p.read_bytes()).decode() for p in images], "topk": 3}
    again = client.post("/v1/models/tiny/predict", json=b64).json()["predictions"]
    assert [t["probability"] for g in again for t in g["top"]] == [t["probability"] for g in got for t in g["top"]]
    raw = client.post("/v1/models/tiny/predict?topk=3", content=images[3].read_bytes(),
                      headers={"content-type": "image/jpeg"}).json()["predictions"]
    assert [t["class"] for t in raw[0]["top"]] == [t["class"] for t in got[3]["top"]]
    np.testing.assert_allclose([t["probability"] for t in raw[0]["top"]], [t["probability"] for t in got[3]["top"]],
                               atol=1e-6)  # batch of 1 against batch of 8: the same up to float rounding


def test_model_list_and_card(client, sample_train):
    listed = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in listed] == ["tiny"] and listed[0]["explainable"]
    card = client.get("/v1/models/tiny").json()
    assert card["classes"] == sample_train.classes and card["input"]["channels"] == 1
    assert card["layout"] in ("NCHW", "channels-last") and card["precision"] == "float32"
    assert (card["input"]["height"], card["input"]["width"]) == (28, 28)
    assert card["params"] > 0 and card["macs"] > 0
    convs = [layer for layer in card["layers"] if layer["type"] == "Conv2d"]
    assert convs and all(len(layer["output_shape"]) == 3 for layer in convs)
    assert card["layers"][-1]["output_shape"] == [10]


def test_explain_returns_maps_at_both_resolutions_equal_to_offline_explain(client, trained_run, images):
    from cnnkit.artifacts import load
    from cnnkit.data import Normalize
    from cnnkit.data.images import load_model_inputs
    from cnnkit.explain.cam import explain

    r = client.post("/v1/models/tiny/explain?method=gradcam&target=Trouser", files=files_of(images[:1]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["target"]["class"] == "Trouser" and body["method"] == "gradcam"
    full, small = np.array(body["map"]), np.array(body["layer_map"])
    assert full.shape == (28, 28) and small.shape[0] < 28 and 0 <= full.min() and full.max() <= 1
    png = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert png.size == (28, 28)
    ckpt = load(trained_run.run_dir)
    raw, _ = load_model_inputs(images[:1], 1, (28, 28))
    ref = explain(ckpt.model, Normalize(*ckpt.normalization)(raw), [1], method="gradcam", layer=body["layer"])
    np.testing.assert_allclose(full, ref.maps[0].numpy(), atol=2e-4)
    # gradient methods work too, at the input's resolution
    sal = client.post("/v1/models/tiny/explain", data={"method": "saliency"}, files=files_of(images[1:2])).json()
    assert np.array(sal["map"]).shape == (28, 28)


BAD = [  # (what, method, path, kwargs builder, status)
    ("unknown model", "post", "/v1/models/nope/predict", lambda img: {"files": img}, 404),
    ("unknown route", "get", "/v2/anything", lambda img: {}, 404),
    ("wrong method", "get", "/v1/models/tiny/predict", lambda img: {}, 405),
    ("wrong content type", "post", "/v1/models/tiny/predict",
     lambda img: {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415),
    ("random bytes", "post", "/v1/models/tiny/predict",
     lambda img: {"files": [("file", ("x.png", os.urandom(300)))]}, 415),
    ("truncated PNG", "post", "/v1/models/tiny/predict",
     lambda img: {"files": [("file", ("t.png", img[0][1][1][:60]))]}, 422),
    ("zero bytes", "post", "/v1/models/tiny/predict", lambda img: {"files": [("file", ("z.png", b""))]}, 422),
    ("huge declared dimensions", "post", "/v1/models/tiny/predict",
     lambda img: {"files": [("file", ("bomb.png", _png_header(100_000, 100_000)))]}, 413),
    ("oversized body", "post", "/v1/models/tiny/predict",
     lambda img: {"files": [("file", ("big.png", b"\0" * (2 * 2**20)))]}, 413),
    ("bad JSON", "post", "/v1/models/tiny/predict",
     lambda img: {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400),
    ("JSON nested past the stack", "post", "/v1/models/tiny/predict",
     lambda img: {"content": b"[" * 200_000, "headers": {"content-type": "application/json"}}, 400),
    ("JSON without images", "post", "/v1/models/tiny/predict", lambda img: {"json": {"x": 1}}, 422),
    ("bad base64", "post", "/v1/models/tiny/predict", lambda img: {"json": {"images": ["***"]}}, 422),
    ("too many images", "post", "/v1/models/tiny/predict", lambda img: {"files": img * 17}, 413),
    ("topk out of range", "post", "/v1/models/tiny/predict?topk=11", lambda img: {"files": img}, 422),
    ("topk not a number", "post", "/v1/models/tiny/predict?topk=x", lambda img: {"files": img}, 422),
    ("unknown method", "post", "/v1/models/tiny/explain?method=magic", lambda img: {"files": img}, 422),
    ("unknown layer", "post", "/v1/models/tiny/explain?layer=nope", lambda img: {"files": img}, 422),
    ("target out of range", "post", "/v1/models/tiny/explain?target=10", lambda img: {"files": img}, 422),
    ("unknown target name", "post", "/v1/models/tiny/explain?target=Dress2", lambda img: {"files": img}, 422),
    ("two images to explain", "post", "/v1/models/tiny/explain", lambda img: {"files": img * 2}, 422),
]


@pytest.mark.parametrize("what,method,path,kwargs,status", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_their_4xx_as_one_json_line(client, images, what, method, path, kwargs, status):
    r = getattr(client, method)(path, **kwargs(files_of(images[:1])))
    assert r.status_code == status, (what, r.status_code, r.text)
    message = r.json()["error"]["message"]
    assert r.json()["error"]["status"] == status and message and "\n" not in message and "Traceback" not in message


def test_metrics_count_requests_by_status_and_batches(client, images):
    client.post("/v1/models/tiny/predict", files=files_of(images[:2]))
    text = client.get("/metrics").text
    assert re.search(r'cnnkit_requests_total\{route="/v1/models/\{name\}/predict",status="200"\} \d', text)
    assert re.search(r'cnnkit_requests_total\{route="/v1/models/\{name\}/predict",status="415"\} \d', text)
    assert 'cnnkit_batch_images_count{kind="predict",model="tiny"}' in text
    assert "cnnkit_queue_images" in text and "cnnkit_request_seconds_bucket" in text


def test_token_is_required_when_set_but_not_for_health(trained_run, images):
    c = make_client(trained_run.run_dir, token="s3cret")
    try:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/models/tiny/predict", files=files_of(images[:1]),
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        ok = c.post("/v1/models/tiny/predict", files=files_of(images[:1]), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    finally:
        c.__exit__(None, None, None)


# -- the batcher on its own ---------------------------------------------------------------------------------------

def test_batcher_forms_batches_keeps_pairs_and_counts_images():
    sizes = []

    def run(x, _args, parts):
        sizes.append(len(x))
        time.sleep(0.01)
        return list((x * 2).split(parts))

    async def main():
        b = Batcher(run, max_batch=8, max_delay_s=0.02, max_queue=100)
        reqs = [torch.full((1 + i % 3, 1), float(i)) for i in range(24)]
        outs = await asyncio.gather(*(b.submit(x) for x in reqs))
        await b.stop()
        return reqs, outs

    reqs, outs = asyncio.run(main())
    for x, y in zip(reqs, outs):
        assert torch.equal(y, x * 2)  # each request gets its own images back, in order
    assert sum(sizes) == sum(len(x) for x in reqs) and max(sizes) > 1 and max(sizes) <= 8


def test_batcher_runs_a_lone_request_at_once_but_waits_for_company_when_others_are_in_progress():
    """With nobody else in progress (one client) a request is not held for max_delay; with other requests in
    progress it waits for them, and they share one batch."""
    sizes = []

    def run(x, _args, parts):
        sizes.append(len(x))
        return list(x.split(parts))

    async def main(others: int):
        b = Batcher(run, max_batch=8, max_delay_s=1.0, max_queue=100, others=lambda: others)
        t = time.perf_counter()
        first = asyncio.ensure_future(b.submit(torch.zeros(1, 1)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.submit(torch.ones(1, 1)))
        await asyncio.gather(first, second)
        await b.stop()
        return time.perf_counter() - t

    alone = asyncio.run(main(0))
    assert alone < 0.5 and sizes == [1, 1]  # neither waited the second of max_delay
    sizes.clear()
    company = asyncio.run(main(3))
    assert company >= 0.9 and sizes == [2]


def test_batcher_fills_the_next_batch_while_one_runs_and_the_model_thread_takes_it():
    """Requests that come while a batch runs form the next one, which runs as soon as the first ends (no second
    max_delay), in the model's own thread; every request gets its own result."""
    threads, sizes, started = set(), [], []

    def run(x, _args, parts):
        threads.add(threading.get_ident())
        started.append(time.perf_counter())
        sizes.append(len(x))
        time.sleep(0.3)
        return list((x + 1).split(parts))

    async def main():
        b = Batcher(run, max_batch=4, max_delay_s=0.05, max_queue=100)
        first = [asyncio.ensure_future(b.submit(torch.full((1, 1), float(i)))) for i in range(4)]  # full: runs now
        await asyncio.sleep(0.1)
        rest = [asyncio.ensure_future(b.submit(torch.full((1, 1), float(i)))) for i in range(4, 8)]
        outs = await asyncio.gather(*first, *rest)
        await b.stop()
        return outs

    outs = asyncio.run(main())
    assert [float(o) for o in outs] == [i + 1.0 for i in range(8)]
    assert sizes == [4, 4] and len(threads) == 1 and threading.get_ident() not in threads
    assert started[1] - started[0] < 0.3 + 0.04  # the second batch started right after the first ended


def test_batcher_refuses_past_its_queue_and_drops_timed_out_requests():
    seen = []

    def slow(x, _args, parts):
        seen.append(x.flatten().tolist())
        time.sleep(0.2)
        return list(x.split(parts))

    async def main():
        b = Batcher(slow, max_batch=1, max_delay_s=0, max_queue=2)
        first = asyncio.ensure_future(b.submit(torch.zeros(1, 1)))
        await asyncio.sleep(0.05)  # the first is running; two more fill the queue
        queued = [asyncio.ensure_future(b.submit(torch.full((1, 1), float(i)), timeout=0.05)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit(torch.ones(1, 1))
        for q in queued:
            with pytest.raises(asyncio.TimeoutError):
                await q
        await first
        await asyncio.sleep(0.1)
        await b.stop()

    asyncio.run(main())
    assert seen == [[0.0]]  # the requests that timed out while queued never ran


# -- a real server process on loopback ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(trained_run):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnkit", "serve", f"tiny={trained_run.run_dir}", "--port", "0",
                             "--max-delay-ms", "300", "--max-batch", "16"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
    assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
    url = m.group(1)
    printed = [line]  # the address, then each model's URL (read aside: a line that never comes fails, not hangs)
    reader = threading.Thread(target=lambda: printed.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(30)
    from cnnkit.serve.client import Client

    with Client(url) as c:
        c.wait_ready(30)
    yield proc, url, printed
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_concurrent_requests_share_forward_passes_and_clients_agree(server, images, tmp_path, trained_run, capsys):
    import httpx

    proc, url, _ = server
    answers = {}

    def one(i):
        with httpx.Client(timeout=30) as c:
            answers[i] = c.post(f"{url}/v1/models/tiny/predict?topk=1",
                                files=[("file", (images[i].name, images[i].read_bytes()))]).json()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from cnnkit.evaluate import predict

    offline = predict(trained_run.run_dir, images, topk=1)
    assert [answers[i]["predictions"][0]["top"][0]["class"] for i in range(8)] == [o.top[0][0] for o in offline]
    metrics = httpx.get(f"{url}/metrics").text
    count = float(re.search(r'cnnkit_batch_images_count\{kind="predict",model="tiny"\} (\S+)', metrics).group(1))
    total = float(re.search(r'cnnkit_batch_images_sum\{kind="predict",model="tiny"\} (\S+)', metrics).group(1))
    assert total >= 8 and count < 8  # 8 one-image requests in fewer forward passes (warm-up's batch of 2 included)
    # the CLI clients use the service
    from cnnkit.cli import main

    assert main(["predict", "--url", f"{url}/v1/models/tiny", str(images[0]), "--topk", "2"]) == 0
    assert offline[0].top[0][0] in capsys.readouterr().out
    assert main(["explain", "--url", f"{url}/v1/models/tiny", str(images[0]), "--out", str(tmp_path / "ex")]) == 0
    assert Image.open(tmp_path / "ex" / f"{images[0].stem}-gradcam.png").size == (28, 28)
    capsys.readouterr()
    assert main(["predict", "--url", f"{url}/v1/models/nope", str(images[0])]) == 2
    err = capsys.readouterr().err
    assert "404" in err and "unknown model" in err and len(err.strip().splitlines()) == 1


def test_serve_prints_each_models_url_and_a_url_of_the_host_alone_reaches_its_one_model(server, images, capsys):
    from cnnkit.cli import main

    _, url, printed = server
    assert len(printed) == 2 and printed[1].split() == ["tiny", f"{url}/v1/models/tiny"]  # whole: copy, paste, ask
    assert main(["predict", "--url", printed[1].split()[1], str(images[0]), "--topk", "1"]) == 0
    by_name = capsys.readouterr().out
    assert main(["predict", "--url", url, str(images[0]), "--topk", "1"]) == 0
    by_host = capsys.readouterr().out
    answers = [[line for line in out.splitlines() if images[0].name in line] for out in (by_name, by_host)]
    assert answers[0] == answers[1] and len(answers[0]) == 1 and "%" in answers[0][0]


def test_a_url_of_the_host_alone_with_several_models_served_names_their_urls(monkeypatch):
    from cnnkit.errors import ConfigError
    from cnnkit.serve.client import Client

    with Client("http://127.0.0.1:9") as c:
        monkeypatch.setattr(c, "models", lambda: [{"name": "tiny"}, {"name": "int8 model"}])
        with pytest.raises(ConfigError) as e:
            c.predict([])
    assert str(e.value) == ("http://127.0.0.1:9 serves 2 models: say which, with a URL ending in /v1/models/NAME "
                            "(http://127.0.0.1:9/v1/models/tiny, http://127.0.0.1:9/v1/models/int8%20model)")
    with Client("http://127.0.0.1:9/v1/models/int8%20model") as c:  # as `cnnkit serve` prints it
        assert c.model == "int8 model"


def test_sigterm_finishes_the_request_in_flight_then_exits_0(server, images):
    import httpx

    proc, url, _ = server
    result = {}

    def slow():  # waits up to --max-delay-ms (300 ms) for a batch to fill: in flight when SIGTERM comes
        result["r"] = httpx.post(f"{url}/v1/models/tiny/predict", timeout=30,
                                 files=[("file", (images[0].name, images[0].read_bytes()))])

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    t.join()
    assert result["r"].status_code == 200
    assert proc.wait(timeout=20) == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=1)


def test_an_onnx_export_is_served_beside_its_checkpoint_with_the_same_answers(trained_run, images, tmp_path):
    from fastapi.testclient import TestClient

    from cnnkit.deploy import export_onnx
    from cnnkit.serve import create_app, load_models

    onnx = export_onnx(trained_run.run_dir, tmp_path / "tiny.onnx").path
    models = load_models([f"ckpt={trained_run.run_dir}", str(onnx)], device="cpu")
    assert list(models) == ["ckpt", "tiny"]
    with TestClient(create_app(models)) as c:
        a = c.post("/v1/models/ckpt/predict", files=files_of(images)).json()["predictions"]
        b = c.post("/v1/models/tiny/predict", files=files_of(images)).json()["predictions"]
        for x, y in zip(a, b):
            assert [t["class"] for t in x["top"]] == [t["class"] for t in y["top"]]
            np.testing.assert_allclose([t["probability"] for t in x["top"]], [t["probability"] for t in y["top"]],
                                       atol=1e-4)
        card = c.get("/v1/models/tiny").json()
        assert card["kind"] == "onnx" and not card["explainable"] and len(card["classes"]) == 10
        r = c.post("/v1/models/tiny/explain", files=files_of(images[:1]))
        assert r.status_code == 422 and "training checkpoint" in r.json()["error"]["message"]


def test_overload_gives_503_with_retry_after_timeouts_504_and_health_answers_meanwhile(trained_run, images):
    """A model slowed to 0.8 s per batch (its forward patched), one image of queue, 0.5 s per request."""
    from fastapi.testclient import TestClient

    from cnnkit.serve import ServeOptions, create_app, load_models

    models = load_models([f"tiny={trained_run.run_dir}"], device="cpu")
    m = models["tiny"]
    fast = m.predict_batch

    started = threading.Event()

    def slow(x, args, sizes):
        started.set()
        time.sleep(0.8)
        return fast(x, args, sizes)

    app = create_app(models, ServeOptions(max_batch=1, max_delay_ms=0, max_queue=1, timeout_s=0.5))
    with TestClient(app) as c:
        for _ in range(100):  # (warming up runs the patched forward once)
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        m.predict_batch = slow
        got = {}

        def post(key):
            got[key] = c.post("/v1/models/tiny/predict", files=files_of(images[:1]))

        started.clear()
        running = threading.Thread(target=post, args=("running",))
        running.start()
        assert started.wait(5)  # its batch is in the worker now
        queued = threading.Thread(target=post, args=("queued",))
        queued.start()
        service = app.state.service
        for _ in range(200):  # until its one image waits in the queue
            if service.queued("tiny") == 1:
                break
            time.sleep(0.005)
        t = time.perf_counter()
        refused = c.post("/v1/models/tiny/predict", files=files_of(images[:1]))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        health = c.get("/healthz")
        assert health.status_code == 200 and time.perf_counter() - t < 0.3  # not behind the running batch
        running.join()
        queued.join()
    assert got["running"].status_code == 504 and "0.5 s" in got["running"].json()["error"]["message"]
    assert got["queued"].status_code == 504


def test_decoding_a_large_image_does_not_hold_up_health_checks(client, images, monkeypatch):
    """Images larger than a thumbnail are decoded off the event loop: a slow decode (patched to 0.5 s) of a
    512×512 PNG and /healthz at the same time."""
    from cnnkit.serve import bodies

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8), "L").save(buf, "PNG")
    assert 512 * 512 > bodies.INLINE_DECODE_PIXELS

    real = bodies.decode_images
    decoding = threading.Event()

    def slow(*args):
        decoding.set()
        time.sleep(0.5)
        return real(*args)

    monkeypatch.setattr(bodies, "decode_images", slow)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("r", client.post("/v1/models/tiny/predict",
                                                                         files=[("file", ("big.png", buf.getvalue()))])))
    t.start()
    assert decoding.wait(5)
    start = time.perf_counter()
    assert client.get("/healthz").status_code == 200
    assert time.perf_counter() - start < 0.3
    t.join()
    assert got["r"].status_code == 200


def test_multipart_bodies_read_as_starlettes_form_parser_reads_them():
    """The predict route parses multipart bodies with python-multipart directly; Starlette's `request.form()`
    is the reference: the same fields and the same files (name, bytes) for the bodies clients send."""
    import httpx
    from starlette.requests import Request

    from cnnkit.serve.bodies import parse_multipart
    from cnnkit.serve.problems import Problem

    png = _png_header(3, 2)
    bodies = [{"files": [("file", ("a.png", png))]},
              {"files": [("x", ("b.png", png)), ("y", ("c.jpg", b"\xff\xd8" + bytes(range(256)) * 9))],
               "data": {"topk": "3", "note": "é ü"}},
              {"files": [("other", ("", b""))], "data": {"topk": "2"}},
              {"files": [("file", ("crlf.png", b"\r\n--not-the-boundary\r\n" + png + b"\r\n"))]}]
    for kwargs in bodies:
        request = httpx.Request("POST", "http://127.0.0.1/", **kwargs)
        body, ctype = request.read(), request.headers["content-type"]

        async def reference():
            async def receive():
                return {"type": "http.request", "body": body, "more_body": False}
            scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
                     "headers": [(b"content-type", ctype.encode())]}
            form = await Request(scope, receive).form()
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if not isinstance(v, str)]
            return fields, files

        assert parse_multipart(body, ctype, max_files=16, max_fields=32) == asyncio.run(reference())
    many = httpx.Request("POST", "http://127.0.0.1/", files=[("f", (f"{i}.png", png)) for i in range(5)])
    with pytest.raises(Problem, match="more than 4 images"):
        parse_multipart(many.read(), many.headers["content-type"], max_files=4, max_fields=32)
    with pytest.raises(Problem, match="no boundary"):
        parse_multipart(b"--x\r\n", "multipart/form-data", max_files=4, max_fields=32)
    with pytest.raises(Problem, match="cannot read the multipart body: .*invalid character") as e:
        parse_multipart(b"--x\r\nbroken header\r\n\r\ndata\r\n--x--\r\n", "multipart/form-data; boundary=x",
                        max_files=4, max_fields=32)
    assert e.value.status == 400
