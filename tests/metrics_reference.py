"""Two-pass float64 NumPy reference for the spectral telemetry tests (independent of metrics/)."""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-12


def cov_two_pass(x, paper: bool = False) -> np.ndarray:
    """Unbiased covariance: mean first, then the centred scatter."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    xc = x - x.mean(axis=0)
    return xc.T @ xc / (x.shape[0] - 1 + (EPS if paper else 0.0))


def exact_metrics(cov: np.ndarray, alphas) -> dict:
    """Every record metric from the definitions in paper-notes §1 (no epsilons)."""
    lam = np.sort(np.clip(np.linalg.eigvalsh(cov), 0.0, None))[::-1]
    d = lam.size
    p = lam / lam.sum()
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    out = {
        "entropy": entropy,
        "soft_rank": math.exp(entropy),
        "hard_rank": float(lam.sum() ** 2 / (lam**2).sum()),
        "eee": min(max(float(sum(p[:k].sum() - k / d for k in range(1, d + 1)) * 2 / d), 0.0), 1.0),
    }
    for a in alphas:
        if math.isinf(a):
            r = 1.0 / p.max()
        elif a == 1:
            r = math.exp(entropy)
        else:
            r = float(np.sum(nz**a) ** (1.0 / (1.0 - a)))
        out[f"renyi_{a:g}"] = r
    return out, p


def exact_js(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return float((a[nz] * np.log(a[nz] / m[nz])).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def paper_metrics(cov: np.ndarray) -> tuple[dict, np.ndarray]:
    """The papers' code conventions: λ ≥ 1e-12 and +1e-12 in every denominator / log."""
    lam = np.clip(np.sort(np.linalg.eigvalsh(cov))[::-1], EPS, None)
    d = lam.size
    p = lam / (lam.sum() + EPS)
    entropy = float(-(p * np.log(p + EPS)).sum())
    cums = np.cumsum(lam) / (lam.sum() + EPS)
    area = float((cums - np.arange(1, d + 1) / d).sum())
    return {
        "entropy": entropy,
        "soft_rank": math.exp(entropy),
        "hard_rank": float((lam.sum() + EPS) ** 2 / ((lam**2).sum() + EPS)),
        "eee": min(max(area / (0.5 * d + EPS), 0.0), 1.0),
    }, p


def paper_js(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)
    kl = lambda a, b: float((a * np.log((a + EPS) / (b + EPS))).sum())  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def relu2(x: np.ndarray) -> np.ndarray:
    return np.square(np.maximum(x, 0.0))


def activations(kind: str, n: int, d: int, seed: int = 0) -> np.ndarray:
    """random: anisotropic Gaussian; lowrank: rank-6 signal + small noise; relu2: post-ReLU² of a
    correlated projection (non-negative, heavy top eigenvalue, a nonzero mean)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, d) + rng.standard_normal(d)
    if kind == "lowrank":
        return rng.standard_normal((n, 6)) @ rng.standard_normal((6, d)) * 2 + 0.05 * rng.standard_normal((n, d))
    if kind == "relu2":
        return relu2(rng.standard_normal((n, d // 2)) @ rng.standard_normal((d // 2, d)) / math.sqrt(d) + 0.3)
    raise ValueError(kind)
