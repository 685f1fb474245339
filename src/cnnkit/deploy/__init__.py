"""Deployable artifacts and what they cost: ONNX and torch.export programs, checked against PyTorch and written
with a sidecar (`cnnkit.deploy.export`; a detector's ONNX, post-processing inside: `cnnkit.deploy.detect`;
`cnnkit.artifacts.load` reads them back), and their latency, throughput, memory and accuracy measured side by
side (`cnnkit.deploy.bench`, whose names stay in that module: `cnnkit.deploy.bench` names the module, not its
`bench` function)."""

from cnnkit.deploy.export import (ExportResult, Writer, export_artifact, export_onnx, export_program, write_onnx,
                                  write_program)

__all__ = ["ExportResult", "Writer", "export_artifact", "export_onnx", "export_program", "write_onnx",
           "write_program"]
