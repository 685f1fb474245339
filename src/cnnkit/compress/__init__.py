"""Compression: int8 quantization (post-training and quantization-aware), structured and unstructured
pruning, and `compress`, which writes the artifacts and a report measuring each variant."""

from cnnkit.compress.prune import CRITERIA, magnitude_masks, prune_structured
from cnnkit.compress.quantize import OBSERVERS, prepare_qat, quantize_fx, quantize_onnx
from cnnkit.compress.run import compress, parse_recipe

__all__ = ["CRITERIA", "OBSERVERS", "compress", "magnitude_masks", "parse_recipe", "prepare_qat", "prune_structured",
           "quantize_fx", "quantize_onnx"]
