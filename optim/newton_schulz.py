"""Quintic Newton–Schulz orthogonalisation (the zeroth matrix power used by Muon and NorMuon)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Coefficients = tuple[float, float, float]

# The paper's code (a vendored microsoft/dion) runs five quintic steps with a different
# (a, b, c) per step; they push singular values towards 1 faster than one fixed tuple.
PAPER_NS_COEFFICIENTS: tuple[Coefficients, ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
# Keller Jordan's single tuple, used by torch.optim.Muon for every step.
KELLER_NS_COEFFICIENTS: tuple[Coefficients, ...] = ((3.4445, -4.7750, 2.0315),)

# Frobenius-normalisation eps: 1e-8 as the paper's runs (its Muon's `epsilon` default reaches
# NS; paper-notes §4b). torch.optim.Muon uses 1e-7.
NS_EPS = 1e-8


def coefficient_schedule(
    coefficients: Sequence[Sequence[float]], steps: int | None = None
) -> list[Coefficients]:
    """Return one (a, b, c) per step: the first `steps` tuples, the last repeated if too few."""
    tuples = [tuple(float(v) for v in c) for c in coefficients]
    if not tuples or any(len(c) != 3 for c in tuples):
        raise ValueError(
            f"ns_coefficients must be a non-empty list of (a, b, c) triples, got {coefficients!r}"
        )
    n = len(tuples) if steps is None else int(steps)
    if n < 1:
        raise ValueError(f"ns_steps must be >= 1, got {steps!r}")
    return [tuples[min(i, len(tuples) - 1)] for i in range(n)]  # type: ignore[misc]


def newton_schulz(
    G: torch.Tensor,
    coefficients: Sequence[Sequence[float]] = PAPER_NS_COEFFICIENTS,
    steps: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    eps: float = NS_EPS,
) -> torch.Tensor:
    """Approximate the polar factor U·Vᵀ of G (shape (..., m, n)) by quintic Newton–Schulz.

    Each step maps X -> a·X + (b·A + c·A²)·X with A = X·Xᵀ. The iteration runs in `dtype`
    (bf16 by default) on the wide orientation (transposed when m > n, so A is the smaller
    Gram matrix), after dividing by ‖X‖_F + eps so every singular value starts in [0, 1].
    Returns a tensor of G's shape in `dtype`; singular values land in a band around 1, not
    exactly on it (see the tests for the band).
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a (..., m, n) tensor, got shape {tuple(G.shape)}")
    schedule = coefficient_schedule(coefficients, steps)
    X = G.to(dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)
    batch_shape = X.shape[:-2]
    if X.ndim > 3:
        X = X.reshape(-1, *X.shape[-2:])
    for a, b, c in schedule:
        X = _quintic_step(X, a, b, c)
    if len(batch_shape) > 1:
        X = X.reshape(*batch_shape, *X.shape[-2:])
    if transposed:
        X = X.mT
    return X


def _quintic_step(X: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    # fused add-matmuls: one rounding per product in low precision, and fewer kernels
    A = X @ X.mT
    if X.ndim == 2:
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        return torch.addmm(X, B, X, beta=a)
    B = torch.baddbmm(A, A, A, beta=b, alpha=c)
    return torch.baddbmm(X, B, X, beta=a)
