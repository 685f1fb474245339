"""Deployable artifacts: ONNX export with a parity check and a JSON sidecar, and loading them back."""

from cnnkit.deploy.artifacts import OnnxModel, export_onnx, export_program, load_onnx, load_program

__all__ = ["OnnxModel", "export_onnx", "export_program", "load_onnx", "load_program"]
