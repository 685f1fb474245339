"""Deployable artifacts: ONNX and torch.export programs, checked against PyTorch and written with a sidecar."""

from cnnkit.artifacts.runtimes import OnnxModel, load_onnx, load_program
from cnnkit.deploy.artifacts import export_onnx, export_program

__all__ = ["OnnxModel", "export_onnx", "export_program", "load_onnx", "load_program"]
