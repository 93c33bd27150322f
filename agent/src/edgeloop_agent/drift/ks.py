"""Two-sample Kolmogorov–Smirnov test in numpy only (the agent cannot import scipy).

The p-value follows ``scipy.stats.ks_2samp(x, y)`` (two-sided, ``method="auto"``):

* ``max(n, m) <= 10_000``: the exact null distribution of the two-sample statistic,
  counting lattice paths that stay inside the band ``|x/n - y/m| < D`` (Hodges, 1958).
  scipy runs the same count with Viehmann's recursion; ours is the same recursion
  in count form, one vectorised ``cumsum`` per lattice column, normalised on the fly.
* otherwise: ``kstwo.sf(D, round(n*m/(n+m)))``, the exact one-sample Kolmogorov
  distribution at the effective sample size, computed with the Simard–L'Ecuyer
  (2011) selection of algorithms that scipy's ``_ksstats`` uses: Ruben–Gambino
  closed forms at the extremes, Durbin's matrix (Marsaglia–Tsang–Wang), Pomeranz's
  recursion, Pelz–Good's series and twice the one-sided Smirnov (Birnbaum–Tingey)
  tail. The algorithm structure and thresholds are a port of scipy's
  ``scipy/stats/_ksstats.py`` (BSD-3-Clause, Copyright (c) 2001-2002 Enthought, Inc.
  and 2003-2024 SciPy Developers).

Accuracy against scipy 1.17 (checked in ``tests/agent/test_drift_ks.py``): the exact
path agrees to 1e-12 absolute; the asymptotic path to 1e-9 relative (the Smirnov tail
is summed in log space here, where scipy uses double-double arithmetic).
"""

from __future__ import annotations

import math
from typing import Literal, overload

import numpy as np

from edgeloop_agent.wire.jsontext import json_text

KsMethod = Literal["auto", "exact", "asymp"]

# scipy.stats.ks_2samp: "auto" is exact if max(n1, n2) <= MAX_AUTO_N.
MAX_AUTO_N = 10_000

_LOG_2PI = math.log(2 * math.pi)
_SQRT2PI = math.sqrt(2 * math.pi)
_SQRT3 = math.sqrt(3)
_PI2 = math.pi**2
_PI4 = math.pi**4
_PI6 = math.pi**6
_MIN_LOG = -708
_SCALE_EXP = 128
_SCALE_UP = 2.0**_SCALE_EXP
_SCALE_DOWN = 2.0**-_SCALE_EXP
# ks_2samp_exact_sf stays in plain floats while log C(a+b, b) is below this (1e-304).
_LINEAR_MAX_LOG = 700.0

# Stirling coefficients B_{2j}/(2j)/(2j-1), j = 8..1 (as in scipy's _ksstats).
_STIRLING_COEFFS = [
    -2.955065359477124183e-2,
    6.4102564102564102564e-3,
    -1.9175269175269175269e-3,
    8.4175084175084175084e-4,
    -5.952380952380952381e-4,
    7.9365079365079365079e-4,
    -2.7777777777777777778e-3,
    8.3333333333333333333e-2,
]
_LOGFACT_SMALL = np.array([math.lgamma(k + 1.0) for k in range(512)])


def ks_statistic(x: np.ndarray, y: np.ndarray) -> float:
    """Exact two-sample KS statistic ``D = sup |F_x - F_y|`` on raw samples (NaN-free)."""
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    y = np.sort(np.asarray(y, dtype=np.float64).ravel())
    if x.size == 0 or y.size == 0:
        raise ValueError(f"ks_statistic: both samples must be non-empty, got {x.size}, {y.size}")
    both = np.concatenate([x, y])
    diff = np.searchsorted(x, both, "right") / x.size - np.searchsorted(y, both, "right") / y.size
    return float(max(diff.max(), -diff.min(), 0.0))


def ks_from_histograms(ref_cdf_at_edges: np.ndarray, live_counts: np.ndarray) -> float:
    """KS statistic from a reference CDF at bin edges and live counts in the same bins.

    ``live_counts`` has ``len(ref_cdf_at_edges) + 1`` entries (bins ``(e[i-1], e[i]]``).
    The result is a lower bound of the exact statistic on the raw data, short of it by
    at most the profile's ``ks_d_bound`` (see ``docs/drift.md``).
    """
    ref = np.asarray(ref_cdf_at_edges, dtype=np.float64)
    counts = np.asarray(live_counts, dtype=np.float64)
    if counts.shape != (ref.size + 1,):
        raise ValueError(
            f"live_counts: expected {ref.size + 1} bins for {ref.size} edges, got {counts.shape}"
        )
    total = counts.sum()
    if total <= 0:
        raise ValueError("live_counts: no live values to compare")
    if ref.size == 0:
        return 0.0
    live = np.cumsum(counts[:-1]) / total
    return float(np.max(np.abs(ref - live)))


def ks_pvalue(d: float, n: int, m: int, method: KsMethod = "auto") -> float:
    """Two-sided p-value of the two-sample KS statistic ``d`` for sample sizes ``n``, ``m``.

    ``method="auto"`` picks what ``scipy.stats.ks_2samp`` picks: exact when
    ``max(n, m) <= 10_000``, else ``kstwo.sf(d, round(n*m/(n+m)))``.
    """
    n = _check_size(n, "n")
    m = _check_size(m, "m")
    d = float(d)
    if not (0.0 <= d <= 1.0):
        raise ValueError(f"d: expected a KS statistic in [0, 1], got {json_text(d)}")
    if method not in ("auto", "exact", "asymp"):
        raise ValueError(f"method: expected 'auto', 'exact' or 'asymp', got {json_text(method)}")
    if method == "exact" or (method == "auto" and max(n, m) <= MAX_AUTO_N):
        return ks_2samp_exact_sf(d, n, m)
    big, small = max(n, m), min(n, m)
    en = big * small / (big + small)
    return kolmogorov_sf(d, round(en))  # half to even, like np.round in scipy


@overload
def ks_2samp_exact_sf(d: float, n: int, m: int) -> float: ...
@overload
def ks_2samp_exact_sf(d: np.ndarray, n: int, m: int) -> np.ndarray: ...
def ks_2samp_exact_sf(d: float | np.ndarray, n: int, m: int) -> float | np.ndarray:
    """Exact ``P(D_{n,m} >= d)`` under the null, for the two-sided two-sample statistic.

    ``d`` may be an array (one statistic per feature, all with sample sizes n and m):
    the features then share one pass over the lattice.

    Counts monotone lattice paths from (0, 0) to (a, b) that stay strictly inside
    ``|x*b/g - y*a/g| < h`` where ``h = round(d * lcm(n, m))`` (scipy rounds the same
    way). Column ``x`` is the running sum of column ``x-1`` over its band; multiplying
    by ``x/(x+b)`` each step keeps the column equal to counts / C(x+b, b), so the last
    entry is the probability of staying inside.

    Those ratios span far more than a double's range once C(a+b, b) passes ~1e304:
    across columns (~1e-377 at x = 1000 for n = m = 4000) and within one band (a band
    1 000 points wide spans ~2**1000). In plain floats they underflowed and the result
    collapsed to p = 1 for every min(n, m) above ~2 000. So: plain floats (every entry
    is a count >= 1 over C(x+b, b) >= 1e-304, nothing underflows) while
    log C(a+b, b) < 700, which covers every size the monitor's default
    ``ks_exact_max_nm`` sends here; beyond that the same recursion in log space
    (``np.logaddexp.accumulate``), about 10x slower. A per-column rescaling is not
    enough: the low entries of a wide band are tiny in their column yet carry the most
    continuations to (a, b). Cost: ``min(n, m)`` steps of a few numpy calls on
    (features x band width) arrays.
    """
    n = _check_size(n, "n")
    m = _check_size(m, "m")
    scalar = np.ndim(d) == 0
    dd = np.atleast_1d(np.asarray(d, dtype=np.float64))
    if dd.ndim != 1 or np.any(~((dd >= 0) & (dd <= 1))):
        raise ValueError("d: expected KS statistics in [0, 1]")
    g = math.gcd(n, m)
    lcm = (n // g) * m
    h = np.round(dd * lcm).astype(np.int64)
    out = np.ones(dd.size)
    a, b = min(n, m), max(n, m)
    ag, bg = a // g, b // g
    x = np.arange(a + 1, dtype=np.int64)
    # Inside points of column x: y*ag in (x*bg - h, x*bg + h), clipped to [0, b].
    lo = np.clip((x[None, :] * bg - h[:, None]) // ag + 1, 0, b)
    hi = np.clip(-((-(x[None, :] * bg + h[:, None])) // ag) - 1, -1, b)
    live = (h > 0) & np.all(lo <= hi, axis=1)
    if not live.any():
        return float(out[0]) if scalar else out
    lo, hi = lo[live], hi[live]
    if math.lgamma(a + b + 1.0) - math.lgamma(a + 1.0) - math.lgamma(b + 1.0) < _LINEAR_MAX_LOG:
        # Every entry is a count >= 1 divided by C(x+b, b) >= 1e-304: plain floats hold it.
        inside = _inside_linear(lo, hi, a, b)
        out[live] = np.clip(1.0 - inside, 0.0, 1.0)
    else:
        log_inside = _log_inside(lo, hi, a, b)
        # 1 - exp(log inside), without losing the small p-values near log inside = 0.
        out[live] = np.clip(-np.expm1(log_inside), 0.0, 1.0)
    return float(out[0]) if scalar else out


def _inside_linear(lo: np.ndarray, hi: np.ndarray, a: int, b: int) -> np.ndarray:
    """P(path stays inside) per band, in plain floats (fast; for C(a+b, b) < 1e304)."""
    k = lo.shape[0]
    x = np.arange(a + 1, dtype=np.int64)
    col = np.zeros((k, b + 1))
    col[np.arange(b + 1)[None, :] <= hi[:, :1]] = 1.0  # column 0: one path to each point
    y = np.arange(b + 1)
    scale = x / (x + float(b))
    for i in range(1, a + 1):
        lo_i, hi_i = lo[:, i], hi[:, i]
        ulo, uhi = int(lo_i.min()), int(hi_i.max()) + 1
        seg = col[:, ulo:uhi]
        if k == 1:
            # Below the band: stale values never read again; above: still zero.
            seg = seg[:, lo_i[0] - ulo :]
            np.add.accumulate(seg, axis=1, out=seg)
            seg *= scale[i]
            continue
        yy = y[ulo:uhi]
        band = (yy >= lo_i[:, None]) & (yy <= hi_i[:, None])
        seg *= band  # points that left the band no longer carry paths
        np.add.accumulate(seg, axis=1, out=seg)
        seg *= band * scale[i]
    return col[:, b]


def _log_inside(lo: np.ndarray, hi: np.ndarray, a: int, b: int) -> np.ndarray:
    """log P(path stays inside) per band, in log space (any size; ~10x slower)."""
    k = lo.shape[0]
    x = np.arange(a + 1, dtype=np.int64)
    col = np.full((k, b + 1), -np.inf)
    # Column 0: one path to each point, divided by C(0 + b, b) = 1.
    col[np.arange(b + 1)[None, :] <= hi[:, :1]] = 0.0
    y = np.arange(b + 1)
    log_scale = np.log(x[1:] / (x[1:] + float(b)))
    for i in range(1, a + 1):
        lo_i, hi_i = lo[:, i], hi[:, i]
        ulo, uhi = int(lo_i.min()), int(hi_i.max()) + 1
        seg = col[:, ulo:uhi]
        if k == 1:
            # Below the band: stale values never read again; above: still -inf (no paths).
            seg = seg[:, lo_i[0] - ulo :]
            np.logaddexp.accumulate(seg, axis=1, out=seg)
            seg += log_scale[i - 1]
            continue
        yy = y[ulo:uhi]
        outside = (yy < lo_i[:, None]) | (yy > hi_i[:, None])
        seg[outside] = -np.inf  # points that left the band no longer carry paths
        np.logaddexp.accumulate(seg, axis=1, out=seg)
        seg += log_scale[i - 1]
        seg[outside] = -np.inf
    return col[:, b]


def kolmogorov_sf(d: float, n: int) -> float:
    """``P(D_n >= d)`` for the one-sample two-sided KS statistic (``scipy.stats.kstwo.sf``)."""
    n = _check_size(n, "n")
    d = float(d)
    if math.isnan(d):
        return math.nan
    if d >= 1.0:
        return 0.0
    if d <= 0.0:
        return 1.0
    t = n * d
    if t <= 1.0:  # Ruben–Gambino: 1/(2n) <= d <= 1/n
        if t <= 0.5:
            return 1.0
        if n <= 140:
            cdf = float(np.prod(np.arange(1, n + 1) * (1.0 / n) * (2 * t - 1)))
        else:
            cdf = math.exp(_log_nfact_div_npown(n) + n * math.log(2 * t - 1))
        return _clip(1.0 - cdf)
    if t >= n - 1:  # Ruben–Gambino
        return _clip(2 * (1.0 - d) ** n)
    if d >= 0.5:  # exact: the two one-sided events cannot both happen
        return _clip(2 * smirnov_sf(n, d))
    nxsq = t * d
    if n <= 140:
        if nxsq <= 0.754693:
            return _clip(1.0 - _durbin_mtw_cdf(n, d))
        if nxsq <= 4:
            return _clip(1.0 - _pomeranz_cdf(n, d))
        return _clip(2 * smirnov_sf(n, d))
    if nxsq >= 370.0:
        return 0.0
    if nxsq >= 2.2:
        return _clip(2 * smirnov_sf(n, d))
    small = n <= 100_000 and n * d**1.5 <= 1.4
    return _clip(1.0 - (_durbin_mtw_cdf(n, d) if small else _pelz_good_cdf(n, d)))


def smirnov_sf(n: int, d: float) -> float:
    """One-sided ``P(D+_n >= d)`` by the Birnbaum–Tingey sum (``scipy.special.smirnov``)."""
    n = _check_size(n, "n")
    d = float(d)
    if d <= 0.0:
        return 1.0
    if d >= 1.0:
        return 0.0
    nd = n * d
    j = np.arange(math.floor(n - nd) + 1, dtype=np.int64)
    p = d + j / n
    q = np.maximum((n - j - nd) / n, 0.0)
    with np.errstate(divide="ignore"):
        logq = np.where(n - j > 0, np.log(q), 0.0)
        log_term = (
            _log_factorial(np.full_like(j, n))
            - _log_factorial(j)
            - _log_factorial(n - j)
            + (j - 1) * np.log(p)
            + (n - j) * logq
        )
    return float(min(d * np.exp(log_term).sum(), 1.0))


def _log_factorial(k: np.ndarray) -> np.ndarray:
    """log(k!) for integer arrays: a table below 512, Stirling's series above."""
    k = np.asarray(k, dtype=np.int64)
    out = np.empty(k.shape)
    small = k < _LOGFACT_SMALL.size
    out[small] = _LOGFACT_SMALL[k[small]]
    z = k[~small] + 1.0
    r = 1.0 / z
    r2 = r * r
    series = r * (1 / 12 - r2 * (1 / 360 - r2 * (1 / 1260 - r2 / 1680)))
    out[~small] = (z - 0.5) * np.log(z) - z + 0.5 * _LOG_2PI + series
    return out


def _log_nfact_div_npown(n: int) -> float:
    # log(n! / n**n) with n*log(n) removed analytically (no cancellation).
    rn = 1.0 / n
    return math.log(n) / 2 - n + _LOG_2PI / 2 + rn * float(np.polyval(_STIRLING_COEFFS, rn / n))


def _clip(p: float) -> float:
    return float(min(max(p, 0.0), 1.0))


def _durbin_mtw_cdf(n: int, d: float) -> float:
    """Durbin's matrix algorithm as evaluated by Marsaglia, Tsang & Wang (2003)."""
    if d >= 1.0:
        return 1.0
    nd = n * d
    if nd <= 0.5:
        return 0.0
    k = math.ceil(nd)
    h = k - nd
    m = 2 * k - 1
    j = np.arange(1, m + 1)
    inv_fact = np.cumprod(np.concatenate([[1.0], 1.0 / j]))  # 1/0!, 1/1!, ..., 1/m!
    w = inv_fact[:m]  # w[j-1] = 1/(j-1)!
    v = (1.0 - h**j) * inv_fact[1:]
    tt = max(2 * h - 1.0, 0.0) ** m - 2 * h**m
    v[-1] = (1.0 + tt) * inv_fact[m]
    H = np.zeros((m, m))
    for i in range(1, m):
        H[i - 1 :, i] = w[: m - i + 1]
    H[:, 0] = v
    H[-1, :] = v[::-1]

    power = np.eye(m)
    expnt = 0
    h_expnt = 0
    nn = n
    while nn > 0:
        if nn % 2:
            power = power @ H
            expnt += h_expnt
        H = H @ H
        h_expnt *= 2
        if abs(H[k - 1, k - 1]) > _SCALE_UP:
            H /= _SCALE_UP
            h_expnt += _SCALE_EXP
        nn //= 2
    p = float(power[k - 1, k - 1])
    if p <= 0.0:
        return 0.0
    # p * n!/n**n * 2**expnt, in logs: n!/n**n underflows long before p does.
    if n <= 1000:
        log_nf = float(np.sum(np.log(np.arange(1, n + 1) / n)))
    else:
        log_nf = _log_nfact_div_npown(n)
    return _clip(math.exp(math.log(p) + log_nf + expnt * math.log(2.0)))


def _pomeranz_j1j2(i: int, n: int, ll: int, ceilf: int, roundf: int) -> tuple[int, int]:
    if i == 0:
        j1, j2 = -ll - ceilf - 1, ll + ceilf - 1
    else:
        ip1div2, ip1mod2 = divmod(i + 1, 2)
        if ip1mod2 == 0:
            if ip1div2 == n + 1:
                j1, j2 = n - ll - ceilf - 1, n + ll + ceilf - 1
            else:
                j1, j2 = ip1div2 - 1 - ll - roundf - 1, ip1div2 + ll - 1 + ceilf - 1
        else:
            j1, j2 = ip1div2 - 1 - ll - 1, ip1div2 + ll + roundf - 1
    return max(j1 + 2, 0), min(j2, n)


def _pomeranz_cdf(n: int, x: float) -> float:
    """Pomeranz (1974) recursion for ``P(D_n <= x)``; used for n <= 140."""
    t = n * x
    ll = math.floor(t)
    f = t - ll
    g = min(f, 1.0 - f)
    ceilf = 1 if f > 0 else 0
    roundf = 1 if f > 0.5 else 0
    npwrs = 2 * (ll + 1)
    mm = np.arange(npwrs)
    # (c/n)^m / m! for the three Poisson-like weights used by the convolutions.
    log_mfact = _log_factorial(mm)

    def powers(c: float) -> np.ndarray:
        if c <= 0:
            out = np.zeros(npwrs)
            out[0] = 1.0
            return out
        return np.exp(mm * math.log(c / n) - log_mfact)

    gpower, twogpower, onem2gpower = powers(g), powers(2 * g), powers(1 - 2 * g)
    V0 = np.zeros(npwrs)
    V1 = np.zeros(npwrs)
    V1[0] = 1.0
    V0s = V1s = 0
    expnt = 0
    j1, j2 = _pomeranz_j1j2(0, n, ll, ceilf, roundf)
    for i in range(1, 2 * n + 2):
        k1 = j1
        V0, V1 = V1, V0
        V0s, V1s = V1s, V0s
        V1.fill(0.0)
        j1, j2 = _pomeranz_j1j2(i, n, ll, ceilf, roundf)
        edge_row = i == 1 or i == 2 * n + 1
        pwrs = gpower if edge_row else (twogpower if i % 2 else onem2gpower)
        ln2 = j2 - k1 + 1
        if ln2 > 0:
            conv = np.convolve(V0[k1 - V0s : k1 - V0s + ln2], pwrs[:ln2])
            conv_start = j1 - k1
            conv_len = j2 - j1 + 1
            V1[:conv_len] = conv[conv_start : conv_start + conv_len]
            top = np.max(V1)
            if 0 < top < _SCALE_DOWN:
                V1 *= _SCALE_UP
                expnt -= _SCALE_EXP
            V1s = V0s + j1 - k1
    ans = float(V1[n - V1s])
    if ans <= 0.0:
        return 0.0
    return _clip(math.exp(math.log(ans) + math.lgamma(n + 1.0) + expnt * math.log(2.0)))


def _pelz_good_cdf(n: int, x: float) -> float:
    """Pelz–Good (1976) approximation of ``P(D_n <= x)`` for large n."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    z = math.sqrt(n) * x
    z2, z3, z4, z6 = z**2, z**3, z**4, z**6
    qlog = -_PI2 / 8 / z2
    if qlog < _MIN_LOG:
        return 0.0
    q = math.exp(qlog)
    k1a, k1b = -z2, _PI2 / 4
    k2a = 6 * z6 + 2 * z4
    k2b = (2 * z4 - 5 * z2) * _PI2 / 4
    k2c = _PI4 * (1 - 2 * z2) / 16
    k3d = _PI6 * (5 - 30 * z2) / 64
    k3c = _PI4 * (-60 * z2 + 212 * z4) / 16
    k3b = _PI2 * (135 * z4 - 96 * z6) / 4
    k3a = -30 * z6 - 90 * z**8
    # Scalars, not 4-element arrays: this runs once per column per report.
    k0 = k1 = k2 = k3 = 0.0
    maxk = math.ceil(16 * z / math.pi)
    for k in range(maxk, 0, -1):  # Horner in q^(8k) over odd m = 2k - 1
        m = 2 * k - 1
        m2, m4, m6 = m**2, m**4, m**6
        qp = q ** (8 * k)
        k0 = k0 * qp + 1.0
        k1 = k1 * qp + (k1a + k1b * m2)
        k2 = k2 * qp + (k2a + k2b * m2 + k2c * m4)
        k3 = k3 * qp + (k3a + k3b * m2 + k3c * m4 + k3d * m6)
    scale = q * _SQRT2PI
    k0 *= scale / z
    k1 *= scale / (6 * z4)
    k2 *= scale / (72 * z**7)
    k3 *= scale / (6480 * z**10)
    q2 = math.exp(-_PI2 / 2 / z2)
    sqrt3z = _SQRT3 * z
    extra2 = extra3 = 0.0
    for k in range(maxk, 0, -1):
        k2sq = k * k
        qp = q2**k2sq
        kspi = math.pi * k
        extra2 += k2sq * qp
        extra3 += (sqrt3z + kspi) * (sqrt3z - kspi) * k2sq * qp
    k2 += extra2 * _PI2 * _SQRT2PI / (-36 * z3)
    k3 += extra3 * _PI2 * _SQRT2PI / (216 * z6)
    rn = math.sqrt(float(n))
    return k0 + k1 / rn + k2 / n + k3 / (n * rn)


def _check_size(v: object, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{field}: expected a sample size >= 1, got {json_text(v)}")
    return int(v)
