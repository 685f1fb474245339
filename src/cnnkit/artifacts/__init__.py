"""The artifact layer, below every step of the flow: atomic writes, output folders that record what cnnkit
wrote, checkpoints with their metadata, and `load(path)` for every artifact kind (checkpoint or run
directory, `.onnx`, `.pt2`, int8 TorchScript `.ts`)."""

from cnnkit.artifacts.checkpoint import (
    FORMAT,
    LoadedCheckpoint,
    load_checkpoint,
    load_state_into,
    read_meta,
    repair_sidecar,
    resize_to_state,
    resolve_checkpoint,
    save_checkpoint,
    save_tensors,
)
from cnnkit.artifacts.files import (
    FILE_MODE,
    DiskWriteError,
    OutputDir,
    RunLock,
    atomic_write_bytes,
    atomic_write_text,
    claim_dir,
)

load = load_checkpoint  # one entry point for every artifact kind

__all__ = ["FORMAT", "FILE_MODE", "LoadedCheckpoint", "load", "load_checkpoint", "load_state_into", "read_meta",
           "repair_sidecar", "resize_to_state", "resolve_checkpoint", "save_checkpoint", "save_tensors",
           "DiskWriteError", "OutputDir", "RunLock", "atomic_write_bytes", "atomic_write_text", "claim_dir"]
