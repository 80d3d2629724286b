"""Built-in synthetic corpus: a sparse Markov chain whose stationary unigram law is exactly Zipf.

Construction (token id = frequency rank, so id 0 is the most frequent token):

* ``p`` is the Zipf law p(r) ~ 1 / (r + 1)^s over ``vocab_size`` ids.
* Each of ``branching`` couplings is a north-west-corner transport plan between ``p`` (rows, in a
  random order) and ``p`` (columns, in another random order). Such a plan F has both marginals
  equal to ``p`` and fewer than 2V non-zeros, so Q = F / p(row) is a sparse transition matrix that
  leaves ``p`` invariant. A rare token lands inside one column interval and gets one or two fixed
  successors; a frequent token spans many columns and gets many.
* The chain moves with the mixture (1 - restart) * mean(Q_k) + restart * p, which keeps ``p``
  stationary, reaches every token, and has an entropy rate far below the unigram entropy: a tiny
  GPT learns the bigram structure within a few hundred steps.

Sampling runs many chains side by side (each started from ``p``, hence stationary from the first
token) and is vectorised across chains, so a few million tokens take well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specsweep.sweep.data.shards import check_vocab_fits
from specsweep.sweep.errors import DataError

# Bump when the generator changes so that cached corpora built by an older version are not reused.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticConfig:
    vocab_size: int = 2048
    zipf_exponent: float = 1.0
    branching: int = 2          # couplings mixed per step; more = higher entropy rate
    restart_prob: float = 0.1   # chance of a fresh Zipf draw instead of a structured successor
    chain_length: int = 1024    # tokens per independent chain before the next one starts
    seed: int = 0

    def validate(self) -> None:
        if not isinstance(self.vocab_size, int) or self.vocab_size < 2:
            raise DataError(f"synthetic vocab_size must be an integer >= 2, got {self.vocab_size!r}")
        check_vocab_fits(self.vocab_size)
        if not self.zipf_exponent > 0:
            raise DataError(f"zipf_exponent must be > 0, got {self.zipf_exponent!r}")
        if not isinstance(self.branching, int) or self.branching < 1:
            raise DataError(f"branching must be an integer >= 1, got {self.branching!r}")
        if not 0 < self.restart_prob <= 1:
            raise DataError(f"restart_prob must be in (0, 1], got {self.restart_prob!r}")
        if not isinstance(self.chain_length, int) or self.chain_length < 2:
            raise DataError(f"chain_length must be an integer >= 2, got {self.chain_length!r}")


@dataclass(frozen=True)
class ZipfMarkovChain:
    """Sparse transition structure (CSR rows of the mean coupling) plus the Zipf law ``p``."""

    p: np.ndarray          # float64 [V], stationary unigram law
    row_ptr: np.ndarray    # int64 [V+1]
    successors: np.ndarray  # int64 [nnz]
    probs: np.ndarray      # float64 [nnz], Q(x, successor), rows sum to 1
    restart_prob: float

    @property
    def vocab_size(self) -> int:
        return int(self.p.size)


def zipf_probs(vocab_size: int, exponent: float) -> np.ndarray:
    """The Zipf law p(r) proportional to 1 / (r + 1)^exponent for r = 0..vocab_size-1."""
    w = np.arange(1, vocab_size + 1, dtype=np.float64) ** -float(exponent)
    return w / w.sum()


def _north_west_coupling(p: np.ndarray, row_order: np.ndarray, col_order: np.ndarray):
    """(rows, cols, mass) of the north-west-corner plan between p in two orders."""
    a = np.cumsum(p[row_order])
    b = np.cumsum(p[col_order])
    a[-1] = b[-1] = 1.0  # both end exactly at 1 despite rounding
    ends = np.union1d(a, b)
    starts = np.concatenate([[0.0], ends[:-1]])
    mass = ends - starts
    mid = 0.5 * (starts + ends)
    rows = row_order[np.minimum(np.searchsorted(a, mid), p.size - 1)]
    cols = col_order[np.minimum(np.searchsorted(b, mid), p.size - 1)]
    keep = mass > 0
    return rows[keep], cols[keep], mass[keep]


def build_chain(cfg: SyntheticConfig) -> ZipfMarkovChain:
    """Build the seeded sparse chain described in the module docstring."""
    cfg.validate()
    V = cfg.vocab_size
    p = zipf_probs(V, cfg.zipf_exponent)
    rng = np.random.default_rng([cfg.seed, 1])
    parts = [_north_west_coupling(p, rng.permutation(V), rng.permutation(V)) for _ in range(cfg.branching)]
    rows = np.concatenate([r for r, _, _ in parts])
    cols = np.concatenate([c for _, c, _ in parts])
    mass = np.concatenate([m for _, _, m in parts]) / cfg.branching
    # Merge duplicate (row, col) pairs from different couplings, then sort by row for CSR.
    key, inverse = np.unique(rows * V + cols, return_inverse=True)
    mass = np.bincount(inverse, weights=mass, minlength=key.size)
    rows, cols = key // V, key % V
    probs = mass / p[rows]
    probs /= np.bincount(rows, weights=probs, minlength=V)[rows]  # exact row sums of 1
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=V))]).astype(np.int64)
    return ZipfMarkovChain(p=p, row_ptr=row_ptr, successors=cols.astype(np.int64), probs=probs,
                           restart_prob=float(cfg.restart_prob))


def entropy_stats(chain: ZipfMarkovChain) -> dict[str, float]:
    """Unigram entropy and exact entropy rate (nats/token, the best achievable loss) of the chain."""
    p, a = chain.p, chain.restart_prob
    rows = np.repeat(np.arange(p.size), np.diff(chain.row_ptr))
    ys = chain.successors
    unigram = float(-(p * np.log(p)).sum())
    # Row x of the mixture is (1-a) Q(x,.) + a p(.): entries off Q's support contribute -a p log(a p);
    # start from that for all y, then correct the entries on the support.
    base = float(-(a * p * np.log(a * p)).sum())
    mixed = (1 - a) * chain.probs + a * p[ys]
    on_support = -mixed * np.log(mixed) + a * p[ys] * np.log(a * p[ys])
    per_row = base + np.bincount(rows, weights=on_support, minlength=p.size)
    return {"unigram_entropy": unigram, "entropy_rate": float((p * per_row).sum())}


def generate_tokens(cfg: SyntheticConfig, n_tokens: int) -> np.ndarray:
    """Sample ``n_tokens`` ids (uint16) from the chain; deterministic in (cfg, n_tokens)."""
    if not isinstance(n_tokens, int) or n_tokens <= 0:
        raise DataError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    chain = build_chain(cfg)
    V = chain.vocab_size
    rng = np.random.default_rng([cfg.seed, 2])
    length = min(cfg.chain_length, n_tokens)
    n_chains = -(-n_tokens // length)
    p_cdf = np.cumsum(chain.p)
    # Row x's cumulative probabilities shifted by x form one increasing array, so a single
    # searchsorted finds the sampled successor of every chain at once.
    counts = np.diff(chain.row_ptr)
    cum = np.cumsum(chain.probs)
    within = cum - np.repeat(np.concatenate([[0.0], cum])[chain.row_ptr[:-1]], counts)
    within[chain.row_ptr[1:] - 1] = 1.0  # exact row ends keep the keys non-decreasing
    keys = np.repeat(np.arange(V), counts) + within
    last_of_row = chain.row_ptr[1:] - 1

    def draw_zipf(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(p_cdf, rng.random(n), side="right"), V - 1)

    out = np.empty((length, n_chains), dtype=np.uint16)
    x = draw_zipf(n_chains)
    for t in range(length):
        out[t] = x
        idx = np.searchsorted(keys, x + rng.random(n_chains), side="right")
        x_next = chain.successors[np.minimum(idx, last_of_row[x])]
        restart = rng.random(n_chains) < chain.restart_prob
        x_next[restart] = draw_zipf(int(restart.sum()))
        x = x_next
    return np.ascontiguousarray(out.T).reshape(-1)[:n_tokens]
