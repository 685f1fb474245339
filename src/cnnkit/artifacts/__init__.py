"""The artifact layer, below every step of the flow: atomic writes, output folders that record what cnnkit
wrote, checkpoints with their metadata, and `load(path, device)`, the one door to every artifact kind
(checkpoint or run directory, `.onnx`, `.pt2`; TorchScript `.ts` is refused)."""

from cnnkit.artifacts.checkpoint import (
    FORMAT,
    load_state_into,
    read_meta,
    repair_sidecar,
    resize_to_state,
    resolve_checkpoint,
    save_checkpoint,
    save_tensors,
)
from cnnkit.artifacts.exported import is_exported
from cnnkit.artifacts.files import (
    FILE_MODE,
    DiskWriteError,
    OutputDir,
    RunLock,
    atomic_write_bytes,
    atomic_write_text,
    claim_dir,
)
from cnnkit.artifacts.kinds import artifact_kind, load
from cnnkit.artifacts.loaded import LoadedCheckpoint

__all__ = ["FORMAT", "FILE_MODE", "LoadedCheckpoint", "artifact_kind", "is_exported", "load", "load_state_into",
           "read_meta", "repair_sidecar", "resize_to_state", "resolve_checkpoint", "save_checkpoint", "save_tensors",
           "DiskWriteError", "OutputDir", "RunLock", "atomic_write_bytes", "atomic_write_text", "claim_dir"]
