"""What cnnkit trusts in a file it is handed: the checks that run before an exported program reaches PyTorch's
loader, which can run code by design.

- `.pt2` (`torch.export`): `torch.export.load` unpickles any weight or constant its archive marks `use_pickle`,
  any "opaque" or custom-object constant, and falls back to a full unpickler when the sample inputs fail the
  weights-only one; the graph it rebuilds may call any `torch.*` function (`torch.save`, `aten::from_file`).
  `program_bytes` reads the archive itself, refuses every member cnnkit's own export never writes and every
  pickled entry, drops the sample inputs (unused by a loaded program), and hands PyTorch an archive with
  nothing left to unpickle; `check_program_graph` then refuses any call that is not a plain ATen operator or
  one that reads or writes files (in an int8 program, also PT2E's quantize/dequantize operators).
- `.ts` (TorchScript): loading runs the file's own code (`__setstate__`), so it cannot be made safe by
  inspection: cnnkit refuses every TorchScript file (`cnnkit.artifacts.exported.refuse_torchscript`).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

from cnnkit.errors import CheckpointError

# ---------------------------------------------------------------------------------------------- .pt2 programs

# the members `torch.export.save` writes for one program named "model", below the archive's root folder
_PT2_MEMBERS = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+|data/sample_inputs/model\.pt"
    r"|extra/[A-Za-z0-9_.-]+)")
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_PT2_MAX_MEMBERS = 100_000


def program_bytes(path: Path) -> io.BytesIO:
    """The `.pt2` archive at `path`, checked and rebuilt in memory so that loading it unpickles nothing:
    CheckpointError for any member other than `torch.export.save`'s own, a compressed member, a pickled weight
    or constant, or a member name that would leave the archive."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not a torch.export archive (.pt2 is a zip file): {e}") from None
    with zf:
        infos = zf.infolist()
        if not infos or len(infos) > _PT2_MAX_MEMBERS:
            raise CheckpointError(f"{path.name} is not a torch.export archive ({len(infos)} members)")
        root = infos[0].filename.split("/", 1)[0]
        for info in infos:
            rel = info.filename[len(root) + 1:] if info.filename.startswith(root + "/") else None
            if rel is None or not _PT2_MEMBERS.fullmatch(rel):
                raise CheckpointError(f"{path.name} holds {info.filename[:80]!r}, which torch.export.save never "
                                      f"writes; cnnkit refuses it (loading it could run code): export the "
                                      f"model again with `cnnkit export --format program`")
            if info.compress_type != zipfile.ZIP_STORED:  # torch writes stored members: size on disk = size read
                raise CheckpointError(f"{path.name}: member {rel} is compressed, which torch.export.save never "
                                      f"does; export the model again")
        for config, prefix in (("data/weights/model_weights_config.json", "weight_"),
                               ("data/constants/model_constants_config.json", "tensor_")):
            _check_payload_config(path, zf, f"{root}/{config}", prefix)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rebuilt:
            for info in infos:
                # the sample inputs are a pickle, read with a weights-only unpickler that falls back to a full
                # one; a loaded program never uses them, so they go (an empty entry reads as "none")
                data = b"" if info.filename == f"{root}/{_SAMPLE_INPUTS}" else zf.read(info)
                rebuilt.writestr(info.filename, data)
    out.seek(0)
    return out


def _check_payload_config(path: Path, zf: zipfile.ZipFile, name: str, prefix: str) -> None:
    """Every entry of a weights or constants config is a raw tensor (no pickle) stored in a member it names."""
    if name not in zf.namelist():
        raise CheckpointError(f"{path.name} has no {name.split('/', 1)[-1]}; it is not a torch.export archive "
                              f"of this PyTorch's format: export the model again")
    try:
        config = json.loads(zf.read(name))
        entries = config["config"]
        ok = isinstance(entries, dict) and all(
            isinstance(e, dict) and e.get("use_pickle") is False and isinstance(e.get("path_name"), str)
            and re.fullmatch(rf"{prefix}\d+", e["path_name"]) for e in entries.values())
    except (ValueError, KeyError, TypeError, RecursionError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path.name}: {name.split('/', 1)[-1]} asks for pickled or unknown entries, "
                              f"which cnnkit refuses (unpickling can run code); export the model again")


def _file_ops() -> frozenset[str]:
    """ATen operators that take a file name (`aten::save`, `aten::from_file`): a program may not call them."""
    import torch

    return frozenset(s.name for s in torch._C._jit_get_all_schemas()
                     if any(a.name in ("filename", "file", "path", "f") and str(a.type) == "str"
                            for a in s.arguments))


# the operators PT2E's int8 programs add to ATen's: quantizing and dequantizing tensors, nothing else
_QUANTIZED_OPS = frozenset({"quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
                            "dequantize_per_channel"})


def check_program_graph(path: Path, graph, quantized: bool = False) -> None:  # noqa: ANN001 - a torch.fx.Graph
    """CheckpointError unless every call in an exported program's graph is an ATen operator that touches no file,
    a getitem on a result, or integer arithmetic on sizes (a program with a dynamic height and width computes
    its layers' sizes from the input's): what `torch.export` produces from a network, nothing that reaches the
    disk. A `quantized` (int8) program may also quantize and dequantize tensors (`quantized_decomposed`)."""
    import operator

    import torch

    banned = _file_ops()
    size_arithmetic = (operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod, operator.neg,
                       torch.sym_max, torch.sym_min)
    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        target = node.target
        fine = node.op == "call_function" and (
            target is operator.getitem or any(target is f for f in size_arithmetic)
            or (isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"
                and target._schema.name not in banned)
            or (quantized and isinstance(target, torch._ops.OpOverload) and target.namespace == "quantized_decomposed"
                and target._schema.name.split("::")[-1] in _QUANTIZED_OPS))
        if not fine:
            raise CheckpointError(f"{path.name} calls {str(target)[:80]} ({node.op}), which is not a plain ATen "
                                  f"operator; cnnkit refuses to run it")
