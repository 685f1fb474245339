"""Compression: int8 quantization (post-training and quantization-aware), structured and unstructured
pruning, and `compress`, which runs recipes (a table of one function per kind, `RECIPE_KINDS`), writes the
artifacts and a report measuring each variant."""

from cnnkit.compress.context import Context, Settings
from cnnkit.compress.prune import CRITERIA, magnitude_masks, prune_structured
from cnnkit.compress.quantize import OBSERVERS, prepare_qat, quantize_onnx, quantize_pt2e
from cnnkit.compress.recipes import RECIPE_KINDS, Recipe, Target, parse_recipe
from cnnkit.compress.report import CompressResult, markdown_table
from cnnkit.compress.pipeline import compress

__all__ = ["CRITERIA", "OBSERVERS", "RECIPE_KINDS", "CompressResult", "Context", "Recipe", "Settings", "Target",
           "compress", "magnitude_masks", "markdown_table", "parse_recipe", "prepare_qat", "prune_structured",
           "quantize_onnx", "quantize_pt2e"]
