"""Chi-squared goodness-of-fit tests for the sampling tests, without scipy.

The survival function of the chi-squared distribution with ``k`` degrees of
freedom is the regularized upper incomplete gamma function::

    sf(x; k) = Q(k / 2, x / 2),   Q(a, x) = Gamma(a, x) / Gamma(a)

``Q`` is evaluated with the power series of ``P = 1 - Q`` for ``x < a + 1`` and
with the continued fraction of ``Q`` (modified Lentz) otherwise, the split that
makes both converge quickly (Press et al., Numerical Recipes, section 6.2).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 100_000


def _lower_series(a: float, x: float) -> float:
    """Regularized lower gamma ``P(a, x)`` by its power series (``x < a + 1``)."""
    term = 1.0 / a
    total = term
    n = a
    for _ in range(_MAX_ITER):
        n += 1.0
        term *= x / n
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _upper_continued_fraction(a: float, x: float) -> float:
    """Regularized upper gamma ``Q(a, x)`` by its continued fraction (``x >= a + 1``)."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h * math.exp(-x + a * math.log(x) - math.lgamma(a))


def chi2_sf(x: float, dof: int) -> float:
    """``P(X >= x)`` for ``X ~ chi-squared(dof)``.

    Args:
      x: statistic, ``>= 0``.
      dof: degrees of freedom, ``>= 1``.

    Returns:
      The survival probability in ``[0, 1]``.
    """
    if dof < 1:
        raise ValueError(f"dof must be >= 1; got {dof}")
    if x <= 0.0:
        return 1.0
    a, half_x = 0.5 * dof, 0.5 * x
    if half_x < a + 1.0:
        return max(0.0, 1.0 - _lower_series(a, half_x))
    return _upper_continued_fraction(a, half_x)


def _pool_small_bins(observed: np.ndarray, expected: np.ndarray,
                     min_expected: float) -> Tuple[np.ndarray, np.ndarray]:
    """Merges bins (in increasing order of expected count) until each has
    ``expected >= min_expected``, so the chi-squared approximation holds."""
    order = np.argsort(expected, kind="stable")
    obs_pooled, exp_pooled = [], []
    acc_o = acc_e = 0.0
    for i in order:
        acc_o += observed[i]
        acc_e += expected[i]
        if acc_e >= min_expected:
            obs_pooled.append(acc_o)
            exp_pooled.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0.0 or acc_o > 0.0:
        if exp_pooled:
            obs_pooled[-1] += acc_o
            exp_pooled[-1] += acc_e
        else:
            obs_pooled.append(acc_o)
            exp_pooled.append(acc_e)
    return np.asarray(obs_pooled), np.asarray(exp_pooled)


def chi2_goodness_of_fit(counts: np.ndarray, probs: np.ndarray,
                         min_expected: float = 5.0) -> Tuple[float, float, int]:
    """Pearson test that ``counts`` are multinomial(``sum(counts)``, ``probs``).

    Items with ``probs == 0`` must have zero counts (else the p-value is 0).

    Args:
      counts: ``<int>[N]`` observed count per item.
      probs: ``<float>[N]`` hypothesised probabilities (summing to 1).
      min_expected: bins with smaller expected counts are pooled.

    Returns:
      ``(statistic, p_value, dof)``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    impossible = probs <= 0.0
    if counts[impossible].sum() > 0:
        return math.inf, 0.0, 0
    expected = counts.sum() * probs[~impossible]
    obs, exp = _pool_small_bins(counts[~impossible], expected, min_expected)
    dof = obs.size - 1
    if dof < 1:
        return 0.0, 1.0, 0
    stat = float(np.sum((obs - exp) ** 2 / exp))
    return stat, chi2_sf(stat, dof), dof


def chi2_two_sample(counts_a: np.ndarray, counts_b: np.ndarray,
                    min_expected: float = 5.0) -> Tuple[float, float, int]:
    """Pearson test of homogeneity: do two count vectors share one distribution?

    The 2 x N contingency table is tested against independence; bins are pooled
    on the pooled counts so every cell expectation is reasonably large.

    Args:
      counts_a: ``<int>[N]`` counts of sample A per item.
      counts_b: ``<int>[N]`` counts of sample B per item.
      min_expected: bins whose pooled count is below this are merged.

    Returns:
      ``(statistic, p_value, dof)``.
    """
    a = np.asarray(counts_a, dtype=np.float64)
    b = np.asarray(counts_b, dtype=np.float64)
    n_a, n_b = a.sum(), b.sum()
    both = a + b
    keep = both > 0
    a, b, both = a[keep], b[keep], both[keep]
    # Pool on the combined counts, then split back by the same bin partition.
    order = np.argsort(both, kind="stable")
    groups, current, acc = [], [], 0.0
    threshold = min_expected * (n_a + n_b) / min(n_a, n_b)
    for i in order:
        current.append(i)
        acc += both[i]
        if acc >= threshold:
            groups.append(current)
            current, acc = [], 0.0
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    pa = np.array([a[g].sum() for g in groups])
    pb = np.array([b[g].sum() for g in groups])
    dof = len(groups) - 1
    if dof < 1:
        return 0.0, 1.0, 0
    tot = pa + pb
    ea = tot * n_a / (n_a + n_b)
    eb = tot * n_b / (n_a + n_b)
    stat = float(np.sum((pa - ea) ** 2 / ea) + np.sum((pb - eb) ** 2 / eb))
    return stat, chi2_sf(stat, dof), dof
