"""One output convention for every command, as a user meets it in real processes: on a pipe, tables as wide as
their content (one row per line, names and paths whole, accuracies as percentages); with --json or --csv,
machine output that parses (full paths, accuracies as fractions); --help whole at 80 columns; --version."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import typing
from importlib.metadata import version
from types import SimpleNamespace

import pytest

from cnnkit.cli import main
from cnnkit.train.config import TrainConfig
from tests.cli.chain import cnnkit, ok

PERCENT = r"\d{1,3}\.\d\d%"  # what every accuracy a person reads looks like: 82.60%


def table_rows(out: str) -> list[str]:
    """The body rows of the rich tables in `out` (lines between the vertical bars, header rows excluded)."""
    return [line for line in out.splitlines() if line.startswith("│")]


def test_version_is_the_packages():
    assert ok(cnnkit("--version")).strip() == f"cnnkit {version('cnnkit')}"


def test_help_at_80_columns_shows_every_training_option_whole():
    out = ok(cnnkit("train", "--help", tty_width=80))
    assert "…" not in out and max(map(len, out.splitlines())) <= 80
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata:
            continue
        name = f.metadata.get("option", "--" + f.name.replace("_", "-"))
        names = [name, "--no-" + name[2:]] if bool in (typing.get_args(hints[f.name]) or [hints[f.name]]) else [name]
        for n in names:
            assert re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", out), f"{n} is not shown whole"


@pytest.fixture(scope="module")
def deep(trained_run, tmp_path_factory):
    """The trained run exported to ONNX in a folder whose path is wider than any terminal."""
    folder = tmp_path_factory.mktemp("out") / ("a-folder-with-a-name-long-enough-to-be-cut-" * 2) / "artifacts"
    out = ok(cnnkit("export", "--checkpoint", trained_run.run_dir, "--out", folder / "tiny.onnx"))
    return SimpleNamespace(onnx=folder / "tiny.onnx", summary=out)


def test_the_summary_table_on_a_pipe_is_one_row_per_line(deep):
    rows = table_rows(deep.summary)
    assert len(rows) == 4 and len(str(deep.onnx)) > 100
    assert any(f" {deep.onnx} " in row for row in rows)  # whole, on one line
    assert any(f" {deep.onnx}.json " in row for row in rows)


def test_bench_on_a_pipe_and_as_json_and_csv(trained_run, deep, tmp_path):
    common = ("--repeats", "3", "--batch", "4", "--data", "sample")
    out = ok(cnnkit("bench", trained_run.run_dir, deep.onnx, *common))
    rows = table_rows(out)
    assert len(rows) == 2  # one row per line, each path whole
    assert f" {trained_run.best_checkpoint} " in rows[0] and f" {deep.onnx} " in rows[1]
    assert all(re.search(rf" {PERCENT} │$", row) for row in rows)  # top-1, last column

    done = cnnkit("bench", deep.onnx, *common, "--json", "--out", tmp_path / "bench.csv")
    measured = json.loads(ok(done))  # stdout is the JSON alone
    assert [m["target"] for m in measured] == [str(deep.onnx)] and 0 <= measured[0]["top1"] <= 1
    assert "1/1 tiny.onnx" in done.stderr  # what it measures, on stderr
    written = list(csv.DictReader(io.StringIO((tmp_path / "bench.csv").read_text())))
    assert written[0]["target"] == str(deep.onnx) and float(written[0]["top1"]) == measured[0]["top1"]


def test_compress_on_a_pipe_names_every_file_whole_and_says_what_it_measures(trained_run, tmp_path):
    out_dir = tmp_path / ("compressed-" * 8)
    done = cnnkit("compress", "--checkpoint", trained_run.run_dir, "--recipe", "int8", "--out", out_dir,
                  "--calibration", "128", "--repeats", "3", "--no-onnx")
    rows = table_rows(ok(done))
    variants = [r for r in rows if re.search(PERCENT, r)]
    # the float model, the float program the int8 one is measured against, and the int8 program: one line each,
    # paths whole
    assert len(variants) == 3
    for row, (variant, runtime, path) in zip(variants, [("float32", "eager", trained_run.best_checkpoint),
                                                        ("float32", "inductor", out_dir / "resnet9.pt2"),
                                                        ("int8", "inductor int8", out_dir / "resnet9.int8.pt2")]):
        assert re.match(rf"│ {variant} +│ {runtime} +│ {re.escape(str(path))} +│", row), row
    assert any(f" {out_dir / 'report.html'} " in r for r in rows)
    for line in ("1/3 best.safetensors", "2/3 resnet9.pt2", "3/3 resnet9.int8.pt2"):
        assert line in done.stderr  # what it measures, variant by variant, on stderr


@pytest.mark.parametrize("fmt", ["--json", "--csv"])
def test_compress_machine_output_keeps_full_paths_and_fractions(fmt, monkeypatch, capsys, tmp_path):
    """(The compression itself is the test above's; here, what --json and --csv make of its rows.)"""
    import cnnkit.compress

    path = tmp_path / ("long-folder-name-" * 6) / "resnet9.int8.pt2"
    rows = [{"variant": "int8", "runtime": "inductor int8", "file": path.name, "target": str(path), "top1": 0.826,
             "top1_delta_pts": -0.3, "float_ops": ["head (Linear)"]}]
    monkeypatch.setattr(cnnkit.compress, "compress", lambda *a, **k: SimpleNamespace(rows=rows))
    assert main(["compress", "--checkpoint", "run", "--recipe", "int8", "--out", str(tmp_path), fmt]) == 0
    out = capsys.readouterr().out
    got = json.loads(out) if fmt == "--json" else list(csv.DictReader(io.StringIO(out)))
    assert got[0]["target"] == str(path) and float(got[0]["top1"]) == 0.826
    assert fmt == "--json" or json.loads(got[0]["float_ops"]) == ["head (Linear)"]


def test_json_and_csv_together_are_refused_in_one_line(capsys):
    assert main(["bench", "run", "--json", "--csv"]) == 2
    err = capsys.readouterr().err
    assert "give --json or --csv, not both" in err and len(err.strip().splitlines()) == 1
