"""The statistics every benchmark reports its differences with (benchmarks/common.py), against scipy and
against cases whose answer is known."""

import math

import numpy as np
import pytest

from benchmarks.common import paired_bootstrap, paired_ratio, t_interval


def test_t_interval_matches_scipy_and_says_when_it_holds_zero():
    from scipy import stats

    values = [0.44, 0.04, 0.32]  # distillation's kd − alone over three seeds
    r = t_interval(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert r["interval"] == pytest.approx([lo, hi]) and r["holds_zero"]
    assert not t_interval([0.9, 1.1, 1.0, 1.05, 0.95])["holds_zero"]


def test_paired_bootstrap_is_paired_and_centred_on_the_difference():
    rng = np.random.default_rng(0)
    a = rng.random(5000) < 0.9
    same = paired_bootstrap(a, a)  # identical models: exactly no difference, however noisy each is
    assert same["difference_points"] == 0 and same["interval_points"] == [0, 0] and same["holds_zero"]
    b = a.copy()
    b[np.flatnonzero(a)[:100]] = False  # B wrong on 100 more images: 2 points behind
    d = paired_bootstrap(a, b, resamples=2000)
    assert d["difference_points"] == pytest.approx(2.0)
    assert 1.5 < d["interval_points"][0] < 2.0 < d["interval_points"][1] < 2.5 and not d["holds_zero"]
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:10])


def test_paired_ratio_interval_is_the_order_statistics():
    r = paired_ratio([1.1, 0.9, 1.3, 1.0, 1.2, 0.95])
    assert r["median"] == pytest.approx(1.05) and r["interval"] == [0.9, 1.3]  # 6 pairs: min and max
    assert r["coverage"] == pytest.approx(1 - 2 / 64, abs=1e-4)  # P(min < median < max) for 6 pairs
    assert math.isnan(paired_ratio([1.0, 1.1])["interval"][0])  # too few pairs for a 95% interval
