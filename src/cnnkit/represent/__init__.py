"""Representation learning on top of the training spine: frozen features of any layer, probes that measure
them (RotNet's Table 1), and few-label transfer. Self-supervised pretraining itself is the training loop with a
pretext task (`fit(pretext="rotnet")`, `cnnkit pretrain`)."""

from cnnkit.represent.features import Features, extract, features, load_features, save_features
from cnnkit.represent.probe import HEADS, ProbeScore, fit_head
from cnnkit.represent.run import ProbeRow, probe

__all__ = ["Features", "extract", "features", "load_features", "save_features", "HEADS", "ProbeScore", "fit_head",
           "ProbeRow", "probe"]
