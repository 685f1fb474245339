"""Probes: how good frozen features are, as RotNet's Table 1 measures it. A classifier is trained on one split's
features and scored on another's; the network itself never changes.

Heads: `linear` (multinomial logistic regression) and `svm` (linear SVM) from scikit-learn on standardized
pooled features; `knn` (scikit-learn, 20 neighbours, cosine) needs no training; `mlp` (RotNet's non-linear
classifier: three fully connected layers of 200 units with BatchNorm and ReLU) and `conv` (a NIN block,
global average pooling and a linear layer, on the unpooled maps) are trained in torch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import ConfigError

HEADS = ("linear", "svm", "knn", "mlp", "conv")


@dataclass
class ProbeScore:
    head: str
    train_acc: float
    test_acc: float
    seconds: float
    dims: int
    test_pred: np.ndarray | None = None  # the predicted class of each scored image, for paired comparisons


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def fit_head(head: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             epochs: int = 30, seed: int = 0) -> ProbeScore:
    """Train `head` on (train_x, train_y) and score it on both splits. Vectors (or maps, flattened) for
    linear, svm, knn and mlp; maps for conv."""
    if head not in HEADS:
        raise ConfigError(f"unknown probe head {head!r}; choose from {', '.join(HEADS)}")
    t = time.perf_counter()
    if head == "conv":
        if train_x.ndim != 4:
            raise ConfigError("the conv probe needs feature maps: extract them with --pool none")
        tr, te, pred = _torch_head(_conv_head(train_x.shape[1], int(train_y.max()) + 1), train_x, train_y, test_x,
                                   test_y, epochs, seed)
        return ProbeScore(head, tr, te, time.perf_counter() - t, int(np.prod(train_x.shape[1:])), pred)
    if train_x.ndim == 4:  # maps given to a head over vectors: flattened, as RotNet's non-linear classifier
        train_x, test_x = train_x.flatten(1), test_x.flatten(1)
    xtr, xte = train_x.flatten(1).double().numpy(), test_x.flatten(1).double().numpy()
    ytr, yte = train_y.numpy(), test_y.numpy()
    if head == "mlp":
        xtr, xte = _standardize(xtr, xte)
        n_classes = int(max(ytr.max(), yte.max())) + 1
        tr, te, pred = _torch_head(_mlp_head(xtr.shape[1], n_classes), torch.from_numpy(xtr).float(), train_y,
                                   torch.from_numpy(xte).float(), test_y, epochs, seed)
        return ProbeScore(head, tr, te, time.perf_counter() - t, xtr.shape[1], pred)
    if head == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        clf = KNeighborsClassifier(n_neighbors=min(20, len(ytr)), metric="cosine", weights="distance")
    elif head == "svm":
        from sklearn.svm import LinearSVC

        xtr, xte = _standardize(xtr, xte)
        clf = LinearSVC(C=0.1, max_iter=5000, random_state=seed)
    else:
        from sklearn.linear_model import LogisticRegression

        xtr, xte = _standardize(xtr, xte)
        clf = LogisticRegression(C=1.0, max_iter=2000)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # an unconverged fit is still a measurement; its accuracy says how good
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    train_acc = float((clf.predict(xtr) == ytr).mean()) if head != "knn" else float("nan")
    pred = clf.predict(xte)
    return ProbeScore(head, train_acc, float((pred == yte).mean()), time.perf_counter() - t, xtr.shape[1], pred)


def _mlp_head(d: int, n: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 200, bias=False), nn.BatchNorm1d(200), nn.ReLU(),
                         nn.Linear(200, 200, bias=False), nn.BatchNorm1d(200), nn.ReLU(), nn.Linear(200, n))


def _conv_head(c: int, n: int) -> nn.Module:
    def unit(cin, cout, k):
        return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    w = min(192, max(32, c))
    return nn.Sequential(*unit(c, w, 3), *unit(w, w, 1), *unit(w, w, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(w, n))


def _torch_head(net: nn.Module, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
                epochs: int, seed: int, batch: int = 128) -> tuple[float, float, np.ndarray]:
    """SGD with momentum, lr 0.1 with a cosine decay, weight decay 5e-4 (RotNet's classifier training,
    shortened); the accuracy on both splits and the predictions on the second."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps = epochs * math.ceil(len(xtr) / batch)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=g)
        for s in range(0, len(xtr), batch):
            idx = order[s:s + batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()

    def predict(x):
        with torch.no_grad():
            return torch.cat([net(x[s:s + 512]).argmax(1) for s in range(0, len(x), 512)])

    pred = predict(xte)
    return float((predict(xtr) == ytr).float().mean()), float((pred == yte).float().mean()), pred.numpy()
