"""How much a width sweep can tell: Δβ between two fits, its interval, and the smallest Δβ it
could resolve (minimum detectable difference, MDD), now or with more seeds or widths.

Plain NumPy/SciPy (no torch, no pandas): the statistics of docs/power.md.

* Each β is an OLS slope of ln R on ln D over one point per width (seeds averaged in ln R per
  width first, as ``metrics.fit`` does): SE(β) = σ / sqrt(Sxx), Sxx = Σ_w (ln D_w − mean ln D)²,
  σ the residual SD of the per-width means, df = n_widths − 2.
* Δβ = β_a − β_b from two independent fits; SE(Δβ) = sqrt(SE_a² + SE_b²); df = min(df_a, df_b)
  (conservative; ``combined_df`` says why not Welch–Satterthwaite); interval Δβ ± t_{0.975,df}·SE.
* MDD (two-sided level α, power 1 − β_II) is exact for the t statistic Δβ̂/SE: the δ at which
  P(|T| > t_{1−α/2,df}) = power for T ~ noncentral t(df, δ/SE). The textbook approximation
  (t_{1−α/2,df} + t_{power,df})·SE is within 3 % of it from df ≥ 4 (``mdd_approx``).
* Seeds: the residual variance of a per-width mean is σ_lof² + σ_seed²/m with m seeds per width
  (σ_lof: the points' scatter about the power law that more seeds do not remove). With several
  seeds, σ_seed is the pooled within-width SD; with one, σ_seed cannot be told from σ_lof and the
  planner assumes all scatter is seed noise (the optimistic bound, flagged ``seed_split=False``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.80
MAX_SEEDS = 64    # the planner looks no further for "seeds per width that would resolve it"
MAX_WIDTHS = 40   # ... nor for "widths that would resolve it"
MAX_SPAN = 64     # ... nor past a widest width this many times the narrowest


# ---- one series ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeriesNoise:
    """A fit's slope and what its scatter says about designs (one optimizer × metric × bucket × site).

    ``sigma``: residual SD of the per-width means (df = n_widths − 2) at ``n_seeds`` seeds per
    width; ``sigma_seed``: pooled within-width SD of ln R across seeds (NaN with one seed);
    ``sigma_lof``: the part of ``sigma`` seeds do not shrink (0 when it cannot be told apart).
    """

    beta: float
    se: float
    df: float
    sigma: float
    ln_widths: tuple[float, ...]
    n_seeds: int
    sigma_seed: float = math.nan
    sigma_lof: float = 0.0
    seed_split: bool = False

    def sigma_at(self, n_seeds: int) -> float:
        """Predicted residual SD of a per-width mean with ``n_seeds`` seeds per width."""
        seed_var = (self.sigma_seed ** 2 if self.seed_split
                    else max(self.sigma ** 2 - self.sigma_lof ** 2, 0.0) * self.n_seeds)
        return math.sqrt(self.sigma_lof ** 2 + seed_var / n_seeds)

    def as_dict(self) -> dict:
        return asdict(self)


def sxx(ln_widths: Sequence[float]) -> float:
    """Σ (ln D − mean ln D)² over distinct widths: the design's leverage on a slope."""
    x = np.asarray(ln_widths, dtype=float)
    return float(((x - x.mean()) ** 2).sum()) if x.size else 0.0


def slope_se(sigma: float, ln_widths: Sequence[float]) -> float:
    """SE(β) = σ / sqrt(Sxx) of an OLS slope over ``ln_widths`` (one point per width)."""
    s = sxx(ln_widths)
    return sigma / math.sqrt(s) if s > 0 else math.nan


def series_noise(ln_width: Sequence[float], ln_value: Sequence[float]) -> SeriesNoise:
    """Slope, SE and noise of one series of points (several seeds per width allowed)."""
    x = np.asarray(ln_width, dtype=float)
    y = np.asarray(ln_value, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"ln_width and ln_value differ in length: {x.shape} vs {y.shape}")
    xs, inv = np.unique(x, return_inverse=True)
    counts = np.bincount(inv, minlength=xs.size)
    means = np.bincount(inv, weights=y, minlength=xs.size) / np.maximum(counts, 1)
    n = int(xs.size)
    nan = math.nan
    seeds = int(counts.min()) if n else 0
    within = y - means[inv]
    df_seed = int(x.size - n)
    sigma_seed = math.sqrt(float(within @ within) / df_seed) if df_seed > 0 else nan
    if n < 3:
        beta = nan
        if n == 2:
            beta = float((means[1] - means[0]) / (xs[1] - xs[0]))
        return SeriesNoise(beta, nan, float(n - 2), nan, tuple(xs.tolist()), seeds, sigma_seed)
    xc = xs - xs.mean()
    s = float(xc @ xc)
    beta = float(xc @ (means - means.mean()) / s)
    resid = means - means.mean() - beta * xc
    sigma = math.sqrt(float(resid @ resid) / (n - 2))
    split = df_seed > 0
    # Seed noise left in a mean of m seeds: σ_seed²/m (harmonic mean of the counts per width).
    m_eff = n / float((1.0 / counts).sum())
    lof = math.sqrt(max(sigma ** 2 - sigma_seed ** 2 / m_eff, 0.0)) if split else 0.0
    return SeriesNoise(beta, sigma / math.sqrt(s), float(n - 2), sigma, tuple(xs.tolist()), seeds,
                       sigma_seed, lof, split)


def noise_from_published(beta: float, std_err: float, ln_widths: Sequence[float]) -> SeriesNoise:
    """A published fit (β, SE, its widths; one run per width) as noise: σ = SE·sqrt(Sxx)."""
    return SeriesNoise(beta, std_err, float(len(ln_widths) - 2), std_err * math.sqrt(sxx(ln_widths)),
                       tuple(float(v) for v in ln_widths), 1)


# ---- two fits -----------------------------------------------------------------------------------

def combined_df(df_a: float, df_b: float) -> float:
    """Degrees of freedom of Δβ's t statistic: the conservative min(df_a, df_b).

    Not Welch–Satterthwaite: with the few widths of a sweep, the WS df estimated from the two
    fits' SEs is so noisy that the test it gives has 48 % power (not 80 %) at its own MDD with 3
    widths per fit, while min(df) keeps power 0.80–0.82 and size ≤ 5 % from 3 to 8 widths
    (docs/power.md, Monte Carlo)."""
    if not (df_a > 0 and df_b > 0):
        return math.nan
    return float(min(df_a, df_b))


def power_at(delta: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """P(two-sided t-test at level α rejects Δβ = 0) when the true difference is ``delta``."""
    if not (se > 0 and df > 0):
        return math.nan
    nc = abs(delta) / se
    tc = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    lower = float(stats.nct.sf(tc, df, -nc))  # P(T < −tc) by symmetry; negligible, NaN-prone far out
    return float(stats.nct.sf(tc, df, nc)) + (lower if math.isfinite(lower) else 0.0)


def mdd(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest |Δβ| the two-sided level-α t-test detects with probability ``power`` (exact,
    noncentral t): δ with power_at(δ, se, df) = power. δ = k(df)·SE, k cached per df."""
    if not (se > 0 and df > 0 and math.isfinite(se)):
        return math.nan
    return float(_mdd_factor(float(df), float(alpha), float(power)) * se)


@functools.lru_cache(maxsize=4096)
def _mdd_factor(df: float, alpha: float, power: float) -> float:
    hi = 1.0
    while power_at(hi, 1.0, df, alpha) < power:
        hi *= 2.0
    return float(optimize.brentq(lambda c: power_at(c, 1.0, df, alpha) - power, 0.0, hi, xtol=1e-10))


def mdd_approx(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """(t_{1−α/2,df} + t_{power,df})·SE: the usual approximation of :func:`mdd`."""
    return float((stats.t.ppf(1.0 - alpha / 2.0, df) + stats.t.ppf(power, df)) * se)


@dataclass(frozen=True)
class Difference:
    """Δβ = β_a − β_b of two independent fits, its interval and the MDD of the design."""

    delta: float
    lower: float
    upper: float
    se: float
    df: float
    p_value: float
    mdd: float
    resolved: bool  # the interval excludes 0

    def as_dict(self) -> dict:
        return asdict(self)


def difference(a: SeriesNoise, b: SeriesNoise, *, alpha: float = ALPHA, power: float = POWER,
               with_mdd: bool = True) -> Difference:
    """Δβ of two fits (β_a − β_b), its t interval and test, and the MDD at their SEs
    (``with_mdd=False``: NaN, for simulations that only need the test)."""
    delta = a.beta - b.beta
    se = math.sqrt(a.se ** 2 + b.se ** 2)
    df = combined_df(a.df, b.df)
    nan = math.nan
    if not (math.isfinite(se) and se > 0 and df > 0):
        return Difference(delta, nan, nan, se, df, nan, nan, False)
    half = float(stats.t.ppf(1.0 - alpha / 2.0, df)) * se
    p = float(2.0 * stats.t.sf(abs(delta) / se, df))
    return Difference(delta, delta - half, delta + half, se, df, p,
                      mdd(se, df, alpha, power) if with_mdd else nan, bool(abs(delta) > half))


# ---- designs ------------------------------------------------------------------------------------

def design_mdd(a: SeriesNoise, b: SeriesNoise, ln_widths_a: Sequence[float], ln_widths_b: Sequence[float],
               seeds_a: int, seeds_b: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The MDD a design (widths and seeds per width of each side) would have, given the noise
    of ``a`` and ``b`` (from a pilot or a published fit)."""
    se_a = slope_se(a.sigma_at(seeds_a), ln_widths_a)
    se_b = slope_se(b.sigma_at(seeds_b), ln_widths_b)
    df = combined_df(len(ln_widths_a) - 2, len(ln_widths_b) - 2)
    return mdd(math.sqrt(se_a ** 2 + se_b ** 2), df, alpha, power)


def extend_widths(widths: Sequence[float], n: int) -> list[float]:
    """The width ladder continued to ``n`` widths at its own spacing: geometric when the ratios
    are constant (1, 2, 4 -> 8, 16), arithmetic when three or more widths have equal steps
    (1..8 -> 9, 10), else at the mean ratio."""
    w = sorted(float(v) for v in widths)
    if len(w) < 2 or n <= len(w):
        return w[:max(n, 0)]
    ratios = np.diff(np.log(w))
    steps = np.diff(w)
    if len(w) >= 3 and np.allclose(steps, steps[0], rtol=1e-6):
        return [float(w[0] + steps[0] * i) for i in range(n)]
    r = float(np.exp(ratios.mean()))
    return [*w, *(w[-1] * r ** i for i in range(1, n - len(w) + 1))]


@dataclass(frozen=True)
class Needed:
    """What would resolve ``target``: seeds per width at the same widths, or widths (continuing
    the ladder) at the same seeds. None where even the cap does not (then ``why_*``)."""

    target: float
    mdd_now: float
    seeds: int | None
    widths: list[float] | None
    why_seeds: str = ""
    why_widths: str = ""


def needed_for(target: float, a: SeriesNoise, b: SeriesNoise, widths: Sequence[float], seeds: int, *,
               alpha: float = ALPHA, power: float = POWER, max_seeds: int = MAX_SEEDS,
               max_widths: int = MAX_WIDTHS, max_span: float = MAX_SPAN) -> Needed:
    """Seeds per width (both sides, at ``widths``) or widths (at ``seeds``; the ladder continued,
    at most ``max_widths`` and a widest width ``max_span`` times the narrowest) for MDD ≤ ``target``."""
    if not target > 0:
        raise ValueError(f"the difference to resolve must be > 0, got {target}")
    lw = [math.log(v) for v in sorted(widths)]
    now = design_mdd(a, b, lw, lw, seeds, seeds, alpha=alpha, power=power)
    found_seeds, why_s = None, ""
    if len(lw) < 3:
        why_s = f"{len(lw)} widths give no interval; seeds do not help"
    else:
        for m in range(1, max_seeds + 1):
            if design_mdd(a, b, lw, lw, m, m, alpha=alpha, power=power) <= target:
                found_seeds = m
                break
        else:
            floor = design_mdd(a, b, lw, lw, 10 ** 6, 10 ** 6, alpha=alpha, power=power)
            why_s = (f"not within {max_seeds} seeds" + (f" (scatter seeds do not remove keeps it ≥ {floor:.2g})"
                                                          if floor > target else ""))
    found_widths, why_w = None, f"not within {max_widths} widths up to {max_span}x the narrowest"
    for n in range(max(len(lw), 3), max_widths + 1):
        ext = extend_widths(widths, n)
        if ext[-1] > max_span * ext[0] * (1 + 1e-9):
            break
        le = [math.log(v) for v in ext]
        if design_mdd(a, b, le, le, seeds, seeds, alpha=alpha, power=power) <= target:
            found_widths, why_w = ext, ""
            break
    return Needed(target, now, found_seeds, found_widths, why_s, why_w)
