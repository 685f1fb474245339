"""The int8 flow on maintained ground: `cnnkit compress`, `bench` and `serve` of its PT2E int8 program run with
every deprecation warning an error (torch's own included: none is hidden by cnnkit any more), and no module
of cnnkit imports `torch.ao.quantization` or writes TorchScript."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from cnnkit.serve.client import Client
from tests.serve.running import running_service

SRC = Path(__file__).resolve().parents[2] / "src" / "cnnkit"
# Python's warnings of deprecation, as errors, in the command and every process it starts (peak-memory probes)
STRICT = "error::DeprecationWarning,error::PendingDeprecationWarning,error::FutureWarning"
# torch's log line (not a Python warning) when torchao 0.18 registers an Enum with torch's pytree on import:
# torchao's call, shown to the user as torch logs it; the one deprecation line allowed on stderr
TORCHAO_IMPORT = re.compile(r"<enum 'KernelPreference'> is an Enum subclass .* register_constant\(\) on Enum "
                            r"subclasses is deprecated")


def _strict(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": STRICT}
    return subprocess.run([sys.executable, "-m", "cnnkit", *args], capture_output=True, text=True, env=env,
                          timeout=900, **kw)


def _deprecations(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "deprecat" in line.lower() and not TORCHAO_IMPORT.search(line)]


def test_compress_bench_and_serve_raise_no_deprecation(trained_run, tmp_path):
    out = tmp_path / "c"
    done = _strict(["compress", "--checkpoint", str(trained_run.run_dir), "--recipe", "int8", "--calibration", "64",
                    "--repeats", "3", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert _deprecations(done.stderr) == [], done.stderr[-2000:]
    int8 = out / "resnet9.int8.pt2"
    assert int8.exists() and (out / "resnet9.int8.onnx").exists()
    assert not list(out.glob("*.ts"))
    done = _strict(["bench", str(int8), "--repeats", "3"])
    assert done.returncode == 0 and _deprecations(done.stderr) == [], done.stderr[-2000:]
    env = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = STRICT  # the service's process inherits it
    try:
        from cnnkit.data import load_dataset
        from PIL import Image

        img = tmp_path / "x.png"
        Image.fromarray(load_dataset("sample", "test").images[0, 0].mul(255).byte().numpy()).save(img)
        with running_service(f"q={int8}", "--device", "cpu", "--max-batch", "2", ready_s=300) as url, Client(url, model="q") as c:
            answer = c.predict([img])
            card = c.card()
    finally:
        if env is None:
            os.environ.pop("PYTHONWARNINGS")
        else:
            os.environ["PYTHONWARNINGS"] = env
    assert len(answer) == 1 and len(answer[0]["top"]) == 5
    # compiled for each batch size its batcher forms before it said it was ready
    assert card["kind"] == "torch.export" and card["compile_seconds"] > 0


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_uses_the_deprecated_quantization_or_torchscript():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    for f in files:
        text = f.read_text()
        assert not any(n.startswith("torch.ao") for n in _imports(f)), f
        assert "torch.ao." not in text, f  # nor through an attribute (torch.ao.nn...)
        assert not re.search(r"torch\.jit\.(save|trace|script|freeze|load)\b", text), f
