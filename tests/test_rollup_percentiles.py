"""Run-time percentiles estimated from the rollups' histograms (``rpa_common.rollups``) stay within
one bin of the exact PERCENTILE_CONT of the same runs, for spreads from sub-second to hours."""

from __future__ import annotations

import math
import random

import pytest

from rpa_common.models.stats import HIST_BINS
from rpa_common.rollups import BIN_RATIO, STEPS_PER_DOUBLING, hist_percentile


def _bin(d: float) -> int:
    """The bin SQL gives a run of ``d`` seconds (``hist_bin``)."""
    if d < 1:
        return 0
    return min(math.floor(math.log(d) * (STEPS_PER_DOUBLING / math.log(2))) + 1, HIST_BINS - 1)


def _exact(values: list[float], p: float) -> float:
    """PERCENTILE_CONT: the two values around ``p * (n - 1)``, interpolated."""
    v = sorted(values)
    pos = p * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@pytest.mark.parametrize(
    ("mu", "sigma", "n"), [(4.0, 1.0, 1000), (0.0, 2.0, 300), (9.0, 0.5, 50), (2.0, 3.0, 7)]
)
def test_an_estimate_is_within_one_bin_of_the_exact_percentile(mu: float, sigma: float, n: int) -> None:
    rnd = random.Random(f"{mu}-{sigma}-{n}")
    values = [rnd.lognormvariate(mu, sigma) for _ in range(n)]
    counts = [0] * HIST_BINS
    for d in values:
        counts[_bin(d)] += 1
    for p in (0.0, 0.05, 0.5, 0.95, 1.0):
        exact = _exact(values, p)
        got = hist_percentile(counts, p, min(values), max(values))
        if exact >= 1:
            assert exact / BIN_RATIO <= got <= exact * BIN_RATIO, (p, exact, got)
        else:
            assert abs(got - exact) <= 1, (p, exact, got)


def test_one_run_is_exact() -> None:
    counts = [0] * HIST_BINS
    counts[_bin(100.0)] = 1
    assert hist_percentile(counts, 0.5, 100.0, 100.0) == 100.0
    assert hist_percentile(counts, 0.95, 100.0, 100.0) == 100.0
