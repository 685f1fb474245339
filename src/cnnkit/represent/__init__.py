"""Representation learning on top of the training spine: frozen features of any layer, probes that measure
them (RotNet's Table 1), few-label transfer, and model soups (weight averages of fine-tuned runs). Self-supervised
pretraining itself is the training loop with a pretext task (`fit(pretext="rotnet")`, `cnnkit pretrain`)."""

from cnnkit.represent.features import Features, extract, features, load_features, save_features
from cnnkit.represent.probe import HEADS, ProbeScore, fit_head
from cnnkit.represent.run import ProbeRow, probe
from cnnkit.represent.soup import GreedyStep, SoupResult, SoupRow, make_soup, recompute_bn

__all__ = ["Features", "extract", "features", "load_features", "save_features", "HEADS", "ProbeScore", "fit_head",
           "ProbeRow", "probe", "GreedyStep", "SoupResult", "SoupRow", "make_soup", "recompute_bn"]
