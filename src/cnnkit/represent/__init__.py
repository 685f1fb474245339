"""Representation learning on top of the training spine: frozen features of any layer, and probes that measure
them (RotNet's Table 1), few-label transfer. Self-supervised pretraining itself is the training loop with a
pretext task (`fit(pretext="rotnet")`, `cnnkit pretrain`); model soups are `cnnkit.merge`'s."""

from cnnkit.represent.features import (DEFAULT_POOL, Features, extract, feature_splits, features, load_feature_splits,
                                      load_features, save_features)
from cnnkit.represent.probe import HEADS, ProbeScore, fit_head
from cnnkit.represent.probe_table import ProbeRow, probe

__all__ = ["DEFAULT_POOL", "Features", "extract", "feature_splits", "features", "load_feature_splits", "load_features",
           "save_features", "HEADS", "ProbeScore", "fit_head", "ProbeRow", "probe"]
