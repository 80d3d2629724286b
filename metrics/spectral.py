"""Spectral metrics of one covariance spectrum (paper-notes §1), in float64 NumPy.

Every function takes eigenvalues in any order (they are sorted descending here) and has two
conventions:
- exact (default): negative eigenvalues (round-off) are clamped to 0, zero-probability modes
  contribute 0 log 0 = 0, no epsilons;
- `paper_eps=True`: the papers' code conventions, so numbers reproduce theirs to 1e-6:
  λ clamped at ≥ 1e-12, p = λ / (Σλ + 1e-12), H = −Σ p log(p + 1e-12),
  PR = (Σλ + 1e-12)² / (Σλ² + 1e-12), EEE area / (D/2 + 1e-12), KL with +1e-12 inside the log.

All-zero spectra are a caller's problem (records flag them before calling); the exact
functions return NaN for them rather than a made-up number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

PAPER_EPS = 1e-12

# The telemetry config default: renyi_0.5, renyi_2, renyi_3, renyi_inf.
DEFAULT_RENYI_ALPHAS: tuple[float, ...] = (0.5, 2.0, 3.0, math.inf)


def renyi_key(alpha: float) -> str:
    """Record key of a Rényi order: 0.5 -> 'renyi_0.5', 3.0 -> 'renyi_3', inf -> 'renyi_inf'."""
    return f"renyi_{float(alpha):g}"


def sorted_spectrum(eigenvalues: np.ndarray | Sequence[float], paper_eps: bool = False) -> np.ndarray:
    """Eigenvalues as a float64 vector sorted descending, clamped (≥ 0, or ≥ 1e-12 in paper mode)."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())[::-1]
    return np.maximum(lam, PAPER_EPS if paper_eps else 0.0)


def normalized_spectrum(eigenvalues: np.ndarray | Sequence[float], paper_eps: bool = False) -> np.ndarray:
    """p_i = λ_i / Σλ, sorted descending."""
    lam = sorted_spectrum(eigenvalues, paper_eps)
    total = lam.sum()
    if paper_eps:
        return lam / (total + PAPER_EPS)
    return lam / total if total > 0 else np.full_like(lam, np.nan)


def _entropy_of(p: np.ndarray, paper_eps: bool) -> float:
    if paper_eps:
        return float(-np.sum(p * np.log(p + PAPER_EPS)))
    nz = p[p > 0]
    return float(-np.sum(nz * np.log(nz)))


def spectral_entropy(eigenvalues: np.ndarray | Sequence[float], paper_eps: bool = False) -> float:
    """Shannon entropy H₁ = −Σ p log p of the normalized spectrum (natural log)."""
    return _entropy_of(normalized_spectrum(eigenvalues, paper_eps), paper_eps)


def soft_rank(eigenvalues: np.ndarray | Sequence[float], paper_eps: bool = False) -> float:
    """Roy–Vetterli effective rank exp(H₁)."""
    return math.exp(spectral_entropy(eigenvalues, paper_eps))


def participation_ratio(eigenvalues: np.ndarray | Sequence[float], paper_eps: bool = False) -> float:
    """Hard rank (Σλ)² / Σλ² on the raw (clamped) eigenvalues."""
    lam = sorted_spectrum(eigenvalues, paper_eps)
    s1, s2 = lam.sum(), np.square(lam).sum()
    if paper_eps:
        return float((s1 + PAPER_EPS) ** 2 / (s2 + PAPER_EPS))
    return float(s1 * s1 / s2) if s2 > 0 else math.nan


def hard_rank_of_matrix(cov: torch.Tensor | np.ndarray) -> float:
    """Hard rank (tr C)² / ‖C‖²_F without an eigendecomposition, reduced in float64.

    Scale-invariant, so an unnormalized scatter matrix gives the same value as C. It equals the
    participation ratio of the eigenvalues (exactly, up to round-off) since tr C = Σλ and
    ‖C‖²_F = Σλ² for symmetric C.
    """
    c = torch.as_tensor(cov).to(torch.float64)
    trace = torch.diagonal(c).sum()
    frob2 = torch.square(c).sum()
    if frob2.item() <= 0:
        return math.nan
    return float((trace * trace / frob2).item())


def renyi_entropy(eigenvalues: np.ndarray | Sequence[float], alpha: float, paper_eps: bool = False) -> float:
    """Rényi entropy H_α = log(Σ p^α) / (1 − α), computed in the log domain.

    α = 1 is the Shannon entropy, α = ∞ is −log max p. α must be > 0 (α → 0 counts the support,
    which round-off makes meaningless).
    """
    alpha = float(alpha)
    if not alpha > 0:
        raise ValueError(f"Rényi order must be > 0, got {alpha}")
    p = normalized_spectrum(eigenvalues, paper_eps)
    if alpha == 1.0:
        return _entropy_of(p, paper_eps)
    nz = p[p > 0]
    if nz.size == 0:
        return math.nan
    if math.isinf(alpha):
        return float(-np.log(nz.max()))
    # log Σ p^α = logsumexp(α log p): no underflow of p^α for large α or tiny p
    a = alpha * np.log(nz)
    top = a.max()
    return float((top + np.log(np.exp(a - top).sum())) / (1.0 - alpha))


def renyi_rank(eigenvalues: np.ndarray | Sequence[float], alpha: float, paper_eps: bool = False) -> float:
    """Rényi-α rank R_α = exp(H_α); R_1 = soft rank, R_2 = hard rank, R_∞ = 1 / max p."""
    return math.exp(renyi_entropy(eigenvalues, alpha, paper_eps))


def eee(eigenvalues: np.ndarray | Sequence[float], paper_eps: bool = False) -> float:
    """Eigenvalue Early Enrichment: (2/D) Σ_k (cumulative share_k − k/D), clamped to [0, 1].

    D is the length of the spectrum: pass all D eigenvalues (zeros included) of a D-dim site.
    """
    lam = sorted_spectrum(eigenvalues, paper_eps)
    d = lam.size
    total = lam.sum() + (PAPER_EPS if paper_eps else 0.0)
    if d == 0 or not total > 0:
        return math.nan
    cum = np.cumsum(lam) / total
    area = float(np.sum(cum - np.arange(1, d + 1, dtype=np.float64) / d))
    max_area = 0.5 * d + (PAPER_EPS if paper_eps else 0.0)
    return min(max(area / max_area, 0.0), 1.0)


def js_divergence(
    eigenvalues_a: np.ndarray | Sequence[float],
    eigenvalues_b: np.ndarray | Sequence[float],
    paper_eps: bool = False,
) -> float:
    """JS(P_a ‖ P_b) of two normalized spectra, each sorted descending, the shorter zero-padded.

    Natural log, range [0, ln 2]. Used as JS(pre ‖ post) of the same layer, step and tokens.
    """
    p = normalized_spectrum(eigenvalues_a, paper_eps)
    q = normalized_spectrum(eigenvalues_b, paper_eps)
    d = max(p.size, q.size)
    p = np.pad(p, (0, d - p.size))
    q = np.pad(q, (0, d - q.size))
    m = 0.5 * (p + q)

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        if paper_eps:
            return float(np.sum(x * np.log((x + PAPER_EPS) / (y + PAPER_EPS))))
        nz = x > 0  # where x > 0, y = (x + ·)/2 > 0 too
        return float(np.sum(x[nz] * np.log(x[nz] / y[nz])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def spectrum_metrics(
    eigenvalues: np.ndarray | Sequence[float],
    renyi_alphas: Iterable[float] = DEFAULT_RENYI_ALPHAS,
    paper_eps: bool = False,
) -> dict[str, float]:
    """entropy, soft_rank, hard_rank (from eigenvalues), eee and renyi_<α> of one spectrum."""
    entropy = spectral_entropy(eigenvalues, paper_eps)
    out = {
        "soft_rank": math.exp(entropy),
        "hard_rank": participation_ratio(eigenvalues, paper_eps),
        "entropy": entropy,
        "eee": eee(eigenvalues, paper_eps),
    }
    for alpha in renyi_alphas:
        out[renyi_key(alpha)] = renyi_rank(eigenvalues, alpha, paper_eps)
    return out
