"""Chains a user runs, each step a `cnnkit` process of its own given what the last one wrote: two runs fine-tuned
from one checkpoint → `soup` → `eval`, `predict`, `export` and `serve` of the soup's folder, the numbers agreeing."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from tests.cli.chain import cnnkit, ok

TINY = ("--model", "resnet9", "--model-kw", "width=8", "--data", "sample", "--train-images", "400", "--epochs", "1",
        "--batch-size", "100", "--quiet")


def test_a_soups_folder_is_a_checkpoint_for_every_command(trained_run, sample_train, tmp_path):
    init = trained_run.run_dir / "best.safetensors"
    for seed in (1, 2):  # ingredients: one initialization, one split seed (the held-out images are shared)
        ok(cnnkit("train", *TINY, "--init-from", init, "--split-seed", "0", "--seed", seed, "--lr", "0.02",
                  "--out", tmp_path / f"ing-{seed}"))
    soup = tmp_path / "soup"
    ok(cnnkit("soup", tmp_path / "ing-1", tmp_path / "ing-2", "--method", "both", "--bn-images", "200", "--quiet",
              "--out", soup))
    scored = {r["name"]: r for r in csv.DictReader((soup / "soup.csv").open())}

    evaluated = cnnkit("eval", "--checkpoint", soup)
    out = ok(evaluated)
    greedy = soup / "soup-greedy.safetensors"
    assert evaluated.stderr.count("\n") == 1 and "loading the greedy one" in evaluated.stderr, evaluated.stderr
    assert str(soup / "soup-uniform.safetensors") in evaluated.stderr  # what to pass for the other
    report = json.loads((soup / "eval-soup-soup-greedy-sample-test.json").read_text())
    assert report["checkpoint"] == str(greedy) and report["data"] == "sample"
    # soup and eval score the same network on the same test split, without TTA: the same number
    assert report["top1"] == pytest.approx(float(scored["greedy soup"]["test_acc"]), abs=1e-6)
    assert f"{100 * report['top1']:.2f}%" in out

    Image.fromarray(sample_train.images[0, 0].numpy()).save(tmp_path / "shirt.png")
    answers = json.loads(ok(cnnkit("predict", tmp_path / "shirt.png", "--checkpoint", soup, "--json")))
    assert answers[0]["image"] == str(tmp_path / "shirt.png") and answers[0]["top"][0]["class"] in sample_train.classes

    exported = ok(cnnkit("export", "--checkpoint", soup))
    assert (soup / "soup-greedy.onnx").is_file() and "soup-greedy.onnx" in exported

    # served (on loopback, a free port), it answers as predict did offline
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "cnnkit", "serve", f"soup={soup}", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        m = re.search(r"http://127\.0\.0\.1:\d+", server.stdout.readline())
        assert m, server.stderr.read() if server.poll() is not None else "no address printed"
        from cnnkit.serve.client import Client

        with Client(m[0]) as c:
            c.wait_ready(60)
        served = json.loads(ok(cnnkit("predict", tmp_path / "shirt.png", "--url", m[0], "--json")))
        assert served[0]["top"][0]["class"] == answers[0]["top"][0]["class"]
        assert served[0]["top"][0]["probability"] == pytest.approx(answers[0]["top"][0]["probability"], abs=1e-4)
    finally:
        server.kill()
        server.wait()


def test_a_folder_of_other_artifacts_is_refused_naming_them(tmp_path):
    from cnnkit.artifacts import load
    from cnnkit.errors import CheckpointError

    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(CheckpointError, match=r"neither a run directory .* nor a soup folder .*pass one of its "
                                              r"files: .*model\.onnx$"):
        load(tmp_path)
