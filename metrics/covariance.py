"""Streaming, exactly mergeable centred covariance (Chan et al. pairwise updates).

State per accumulator: row count n, mean (float64, [D]) and the centred scatter
M2 = Σ (x − mean)(x − mean)ᵀ ([D, D], fp32 by default). Memory is O(D²), independent of the
number of rows. Every chunk is centred (on its mean, or a close estimate with the residual folded
back exactly) before the GEMM, so the fp32 scatter never suffers the cancellation of an uncentred
second moment (optimizers-and-metrics.md §2).

On CUDA the GEMM takes bf16 inputs and accumulates in fp32 by default (~15x faster than IEEE fp32
at D = 6144 on an H100); on a CPU, which has no such kernel, capture stays exact fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist


@contextlib.contextmanager
def _ieee_fp32_matmul(enabled: bool) -> Iterator[None]:
    """Turn TF32 off for CUDA matmuls inside the block (it silently costs ~4e-4 relative)."""
    if not enabled:
        yield
        return
    matmul = torch.backends.cuda.matmul
    try:
        previous = matmul.allow_tf32
        matmul.allow_tf32 = False
    except (AttributeError, RuntimeError):  # a torch that only has the newer precision API
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            matmul.allow_tf32 = previous


def default_bf16_matmul(device: torch.device | str) -> bool:
    """The capture precision used when a caller does not choose: bf16 GEMM inputs on CUDA only.

    CUDA has a bf16-in/fp32-out GEMM (~15x faster than IEEE fp32 at D = 6144 on an H100); a CPU
    has none, so CPU capture stays exact fp32.
    """
    return torch.device(device).type == "cuda"


_SHIFT_ROWS = 1024  # rows sampled for the bf16 path's centring shift
_MM_OUT_DTYPE: dict[str, bool] = {}  # device type -> torch.mm(..., out_dtype=) works there


def _bf16_scatter(xb: torch.Tensor) -> torch.Tensor:
    """xbᵀ xb ([D, D], float32) of a bf16 [N, D] chunk: bf16 products, fp32 accumulation.

    On CUDA one GEMM with fp32 output (never a bf16 output: 7e-2 error at D = 4096). Where no such
    kernel exists (CPU, older torch) the chunk is upcast and multiplied in IEEE fp32, which gives
    the same numbers (a product of two bf16 values is exact in fp32) at fp32 speed.
    """
    kind = xb.device.type
    if _MM_OUT_DTYPE.get(kind, True):
        try:
            out = torch.mm(xb.t(), xb, out_dtype=torch.float32)
            _MM_OUT_DTYPE[kind] = True
            return out
        except torch.OutOfMemoryError:
            raise
        except (TypeError, RuntimeError):  # no such kernel here (CPU), or a torch without out_dtype
            _MM_OUT_DTYPE[kind] = False
    xf = xb.float()  # [N, D]
    with _ieee_fp32_matmul(xf.is_cuda):
        return xf.t() @ xf


class CovarianceAccumulator:
    """Centred covariance of rows in R^D, updated from [N, D] chunks and merged exactly.

    Args:
        dim: D, or None to take it from the first chunk.
        device: where the state lives; None = the first chunk's device (needed up front only for
            `all_reduce_` on a rank that saw no rows).
        dtype: accumulation dtype of the scatter, torch.float32 (default) or torch.float64. Inputs
            of any float dtype (bf16 included) are cast to it; outputs are never bf16.
        bf16_matmul: feed the centred chunk to the GEMM as bf16 with fp32 accumulation and output.
            None (default) = on for CUDA state, off for CPU state (`default_bf16_matmul`); False =
            IEEE fp32 everywhere (TF32 kept off); True on a CPU = the same numbers, emulated at
            fp32 speed (for accuracy checks). Accuracy against fp64 of the same bf16 activations,
            measured by that emulation (65,536 rows, D = 256–1024; random, ReLU², low-rank and
            rank-D/4 data): covariance 0.3–4e-4 relative (Frobenius), soft rank ≤ 4e-5, hard rank
            ≤ 2e-5. That is the size of what rounding fp32 activations to bf16 (autocast) changes
            in the first place (covariance 0.3–3e-4, soft rank ≤ 4e-5, hard rank ≤ 6e-6); on an
            H100, telemetry-cost.md reports 2–3e-4 on soft rank and ~5e-5 on hard rank.
        keep_rows: also keep the raw rows while n < D, so the spectrum can come from the n×n Gram
            matrix (same nonzero eigenvalues, much cheaper). Costs at most D² extra numbers.
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        bf16_matmul: bool | None = None,
        keep_rows: bool = False,
    ) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"accumulation dtype must be float32 or float64, got {dtype}")
        self.dim = dim
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.bf16_matmul = bf16_matmul
        self.keep_rows = keep_rows
        self.reset()

    def reset(self) -> None:
        """Forget all rows (state is reallocated lazily on the next update)."""
        self.n = 0
        self.mean: torch.Tensor | None = None  # [D] float64
        self.m2: torch.Tensor | None = None  # [D, D] self.dtype
        self._rows: list[torch.Tensor] | None = [] if self.keep_rows else None

    # ------------------------------------------------------------------ updates
    def update(self, x: torch.Tensor) -> None:
        """Add the rows of x ([..., D], any float dtype) to the accumulator."""
        if self.dim is None:
            self.dim = int(x.shape[-1])
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dimension {self.dim}, got shape {tuple(x.shape)}")
        x = x.detach().reshape(-1, self.dim)  # [N, D]
        nb = x.shape[0]
        if nb == 0:
            return
        if self.device is None:
            self.device = x.device
        # no autocast: under bf16 autocast (as in training forwards) the GEMM would run in bf16
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            x = x.to(self.device)  # dtype kept: the bf16 path reads bf16 activations as they are
            if self.bf16_gemm:
                mean, scatter = self._centred_scatter_bf16(x)
            else:
                mean, scatter = self._centred_scatter_exact(x)
            # rows are copied (the caller may reuse its activation buffer), and only while the
            # Gram path can still use them
            keep = self._rows is not None and self.n + nb < self.dim
            rows = [x.to(self.dtype, copy=True)] if keep else None
            self._merge_stats(nb, mean, scatter, rows, owned=True)

    @property
    def bf16_gemm(self) -> bool:
        """Whether updates feed the GEMM bf16 inputs (bf16_matmul, or its default for the device)."""
        if self.bf16_matmul is not None:
            return bool(self.bf16_matmul)
        return default_bf16_matmul(self.device if self.device is not None else "cpu")

    def _centred_scatter_exact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chunk mean [D] float64, centred scatter [D, D]) with the GEMM in the accumulation dtype."""
        nb = x.shape[0]
        xa = x.to(self.dtype)  # [N, D]
        shift = xa.mean(dim=0)  # [D], in the accumulation dtype
        xc = xa - shift  # [N, D]
        with _ieee_fp32_matmul(xc.is_cuda):
            scatter = xc.t() @ xc  # [D, D]
        # `shift` is the chunk mean only up to round-off; fold the residual back in exactly:
        # Σ(x − m)(x − m)ᵀ = Σ(x − s)(x − s)ᵀ − r rᵀ / N with r = Σ(x − s), m = s + r / N.
        resid = xc.sum(dim=0, dtype=torch.float64)  # [D]
        mean = shift.to(torch.float64) + resid / nb
        scatter.addr_(resid.to(self.dtype), resid.to(self.dtype), alpha=-1.0 / nb)
        return mean, scatter

    def _centred_scatter_bf16(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chunk mean [D] float64, centred scatter [D, D]) from bf16 GEMM inputs, fp32 output.

        One pass over the [N, D] chunk besides the GEMM: x − s (fp32 arithmetic) is written
        straight to bf16 into a buffer with a column of ones and zero padding, [N, D + pad]. The
        GEMM of that buffer yields Σ(x − s)(x − s)ᵀ and r = Σ(x − s) together, so the exact mean
        m = s + r / N and M2 = Σ(x − s)(x − s)ᵀ − r rᵀ / N need no second pass. The shift s is the
        mean of ≤ 1024 evenly strided rows: close enough to m that the fp32 subtraction of r rᵀ / N
        loses nothing, and bf16 rounds the small centred values, not the raw activations.
        """
        nb, d = x.shape
        stride = max(1, nb // _SHIFT_ROWS)
        shift = x[::stride].mean(dim=0, dtype=torch.float64).to(torch.float32)  # [D]
        width = d + (8 - d % 8)  # ones column at index d; a multiple of 8 keeps the GEMM aligned
        buf = torch.empty(nb, width, dtype=torch.bfloat16, device=x.device)  # [N, D + pad]
        torch.sub(x, shift, out=buf[:, :d])
        buf[:, d] = 1.0
        buf[:, d + 1:] = 0.0
        full = _bf16_scatter(buf)  # [D + pad, D + pad] float32
        resid = full[:d, d].to(torch.float64)  # r = Σ (x − s) over the bf16 values, [D]
        mean = shift.to(torch.float64) + resid / nb
        scatter = full[:d, :d].to(self.dtype, copy=True)  # a compact [D, D], not a view of `full`
        scatter.addr_(resid.to(self.dtype), resid.to(self.dtype), alpha=-1.0 / nb)
        return mean, scatter

    def _merge_stats(
        self,
        nb: int,
        mean_b: torch.Tensor,
        m2_b: torch.Tensor,
        rows_b: list[torch.Tensor] | None,
        owned: bool = False,
    ) -> None:
        """Chan's pairwise merge of (n, mean, M2) with another set of statistics.

        owned: the tensors are fresh temporaries that may be adopted without a copy.
        """
        na = self.n
        if na == 0:
            if owned:
                self.n, self.mean, self.m2 = nb, mean_b, m2_b
            else:
                self.n, self.mean, self.m2 = nb, mean_b.clone(), m2_b.clone()
        else:
            n = na + nb
            delta = mean_b - self.mean  # [D] float64
            # between-means correction: n_a n_b / n · δδᵀ
            self.m2.add_(m2_b).addr_(delta.to(self.dtype), delta.to(self.dtype), alpha=na * nb / n)
            self.mean.add_(delta, alpha=nb / n)
            self.n = n
        if self._rows is not None:
            if rows_b is None or self.n >= (self.dim or 0):
                self._rows = None  # enough rows: the D×D covariance is the cheaper path now
            else:
                self._rows.extend(rows_b)

    def merge(self, other: CovarianceAccumulator) -> CovarianceAccumulator:
        """Fold another accumulator's rows into this one (exact); returns self."""
        if other.n == 0:
            return self
        if self.dim is None:
            self.dim = other.dim
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dim {other.dim} into dim {self.dim}")
        if self.device is None:
            self.device = other.device
        rows = list(other._rows) if other._rows is not None else None
        self._merge_stats(other.n, other.mean.to(self.device), other.m2.to(self.device, self.dtype), rows)
        return self

    def copy(self) -> CovarianceAccumulator:
        """An independent accumulator with the same rows."""
        out = CovarianceAccumulator(
            self.dim, device=self.device, dtype=self.dtype, bf16_matmul=self.bf16_matmul,
            keep_rows=self.keep_rows,
        )
        return out.merge(self) if self.n else out

    def all_reduce_(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum this accumulator over all ranks of `group`, in place, exactly.

        Collective: every rank must call it, in the same order for every accumulator.
        Three all-reduces: n, Σ n_r·mean_r (-> the pooled mean), and
        Σ_r [M2_r + n_r (mean_r − mean)(mean_r − mean)ᵀ] (the between-means correction).
        """
        if self.dim is None:
            raise ValueError("all_reduce_ needs a known dim on every rank (pass dim=)")
        device = self.device if self.device is not None else torch.device("cpu")
        self.device = device
        if self.n == 0:
            self.mean = torch.zeros(self.dim, dtype=torch.float64, device=device)
            self.m2 = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=device)
        count = torch.tensor([float(self.n)], dtype=torch.float64, device=device)
        dist.all_reduce(count, group=group)
        total = int(round(count.item()))
        weighted = self.mean * self.n  # [D]
        dist.all_reduce(weighted, group=group)
        pooled_mean = weighted / max(total, 1)
        delta = (self.mean - pooled_mean).to(self.dtype)
        m2 = self.m2.addr(delta, delta, alpha=float(self.n))
        dist.all_reduce(m2, group=group)
        self.n, self.mean, self.m2 = total, pooled_mean, m2
        # rows live on one rank only; after a reduction only the covariance path is exact
        self._rows = None

    # ------------------------------------------------------------------ reads
    def rows(self) -> torch.Tensor | None:
        """The raw rows ([n, D], accumulation dtype) when kept and n < D, else None."""
        if self._rows is None or self.n == 0:
            return None
        return torch.cat(self._rows, dim=0)

    def scatter(self) -> torch.Tensor | None:
        """Centred scatter M2 = Σ (x − mean)(x − mean)ᵀ ([D, D], accumulation dtype); None if empty."""
        return self.m2

    def cov(self, paper_eps: bool = False) -> torch.Tensor | None:
        """Unbiased covariance M2 / (n − 1) in float64 ([D, D]); None when n < 2.

        `paper_eps` uses the papers' denominator n − 1 + 1e-12.
        """
        if self.n < 2:
            return None
        return self.m2.to(torch.float64) / (self.n - 1 + (1e-12 if paper_eps else 0.0))
