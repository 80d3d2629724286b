"""Spectral metrics and one-shot records against the two-pass float64 NumPy reference."""

import math

import numpy as np
import pytest
import torch

from specsweep.metrics import (
    eee,
    hard_rank_of_matrix,
    js_divergence,
    participation_ratio,
    renyi_rank,
    soft_rank,
    spectral_records,
)
from metrics_reference import (
    activations,
    cov_two_pass,
    exact_js,
    exact_metrics,
    paper_js,
    paper_metrics,
    relu2,
)

ALPHAS = (0.5, 2.0, 3.0, math.inf)
KINDS = ("random", "lowrank", "relu2")
METRICS = ("soft_rank", "hard_rank", "entropy", "eee") + tuple(f"renyi_{a:g}" for a in ALPHAS)


def _close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(abs(b), 1e-300)


def _by(records, site, bucket="global"):
    (rec,) = [r for r in records if r["site"] == site and r["bucket"] == bucket]
    return rec


@pytest.mark.parametrize("kind", KINDS)
def test_records_match_float64_reference(kind):
    pre = activations(kind, 700, 48, seed=1)
    post = relu2(pre)
    records = spectral_records(
        {"pre": torch.from_numpy(pre), "post": torch.from_numpy(post)}, renyi_alphas=ALPHAS
    )
    ref_pre, p = exact_metrics(cov_two_pass(pre), ALPHAS)
    ref_post, q = exact_metrics(cov_two_pass(post), ALPHAS)
    for site, ref in (("pre", ref_pre), ("post", ref_post)):
        rec = _by(records, site)
        assert rec["status"] == "ok"
        for key in METRICS:
            assert _close(rec[key], ref[key], 1e-6), (site, key, rec[key], ref[key])
        assert _close(rec["js"], exact_js(p, q), 1e-6)
        assert rec["n_rows"] == 700 and rec["dim"] == 48 and rec["n_over_d"] == pytest.approx(700 / 48)
        assert rec["sampling"] == "well" and rec["neg_mass"] < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_paper_eps_reproduces_paper_formulas(kind):
    pre = activations(kind, 500, 40, seed=2)
    post = relu2(pre)
    records = spectral_records(
        {"pre": torch.from_numpy(pre), "post": torch.from_numpy(post)}, paper_eps=True
    )
    ref_pre, p = paper_metrics(cov_two_pass(pre, paper=True))
    ref_post, q = paper_metrics(cov_two_pass(post, paper=True))
    for site, ref in (("pre", ref_pre), ("post", ref_post)):
        rec = _by(records, site)
        for key, value in ref.items():
            assert _close(rec[key], value, 1e-6), (site, key)
        assert _close(rec["js"], paper_js(p, q), 1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_policy_within_1e3(kind):
    pre = activations(kind, 2000, 64, seed=3)
    post = relu2(pre)
    ref_pre, p = exact_metrics(cov_two_pass(pre), ALPHAS)
    ref_post, q = exact_metrics(cov_two_pass(post), ALPHAS)
    records = spectral_records(
        {"pre": torch.from_numpy(pre).float(), "post": torch.from_numpy(post).float()},
        accum_dtype=torch.float32,
    )
    for site, ref in (("pre", ref_pre), ("post", ref_post)):
        rec = _by(records, site)
        for key in METRICS:
            assert _close(rec[key], ref[key], 1e-3), (site, key)
    assert _close(_by(records, "pre")["js"], exact_js(p, q), 1e-3)


def test_bf16_inputs_accumulate_in_fp32():
    # the only error allowed is the bf16 rounding of the activations themselves
    x = torch.from_numpy(activations("relu2", 3000, 64, seed=4)).to(torch.bfloat16)
    ref, _ = exact_metrics(cov_two_pass(x.double().numpy()), ALPHAS)
    rec = spectral_records(x, accum_dtype=torch.float32)[0]
    for key in METRICS:
        assert _close(rec[key], ref[key], 1e-3), key


def test_hard_rank_trace_formula_equals_eigenvalue_pr():
    cov = cov_two_pass(activations("relu2", 400, 80, seed=5))
    lam = np.linalg.eigvalsh(cov)
    assert hard_rank_of_matrix(torch.from_numpy(cov)) == pytest.approx(participation_ratio(lam), rel=1e-12)
    assert hard_rank_of_matrix(cov * 123.0) == pytest.approx(participation_ratio(lam), rel=1e-12)
    assert hard_rank_of_matrix(torch.from_numpy(cov).float()) == pytest.approx(participation_ratio(lam), rel=1e-5)


def test_renyi_family_identities_and_log_domain():
    lam = np.array([5.0, 3.0, 1.0, 0.5, 0.25, 0.0, -1e-17])
    assert renyi_rank(lam, 1.0) == pytest.approx(soft_rank(lam), rel=1e-12)
    assert renyi_rank(lam, 2.0) == pytest.approx(participation_ratio(lam), rel=1e-12)
    assert renyi_rank(lam, math.inf) == pytest.approx(lam.sum() / 5.0 + 1e-17 / 5.0, rel=1e-12)
    ranks = [renyi_rank(lam, a) for a in (0.25, 0.5, 1.0, 2.0, 3.0, 10.0, math.inf)]
    assert all(a >= b - 1e-12 for a, b in zip(ranks, ranks[1:]))
    # p^α underflows in the linear domain (1e-200^2 = 0); the log domain keeps R_α finite and right
    tiny = np.array([1e-200, 1e-200, 1e-200, 1e-200])
    assert renyi_rank(tiny, 2.0) == pytest.approx(4.0, rel=1e-12)
    assert renyi_rank(tiny, 500.0) == pytest.approx(4.0, rel=1e-12)
    with pytest.raises(ValueError):
        renyi_rank(lam, 0.0)


def test_eee_and_js_conventions():
    d = 16
    assert eee(np.ones(d)) == pytest.approx(0.0, abs=1e-15)
    assert eee(np.r_[1.0, np.zeros(d - 1)]) == pytest.approx((d - 1) / d)
    # JS sorts both spectra descending and zero-pads the shorter; it is bounded by ln 2
    assert js_divergence([1.0, 2.0, 3.0], [3.0, 1.0, 2.0]) == pytest.approx(0.0, abs=1e-15)
    assert js_divergence([1.0, 1.0], [1.0, 1.0, 0.0, 0.0]) == pytest.approx(0.0, abs=1e-15)
    assert js_divergence([1.0, 0.0], [0.0, 0.0, 0.0, 1.0]) == pytest.approx(0.0, abs=1e-15)
    assert js_divergence([1.0, 1.0, 0.0], [0.0, 0.0, 1.0]) <= math.log(2) + 1e-15


def test_gram_path_equals_covariance_path_when_n_below_d():
    x = torch.from_numpy(activations("relu2", 30, 96, seed=6))
    gram = spectral_records(x, keep_eigenvalues=True, gram_below_dim=True)[0]
    full = spectral_records(x, keep_eigenvalues=True, gram_below_dim=False)[0]
    ref, _ = exact_metrics(cov_two_pass(x.numpy()), ALPHAS)
    assert gram["status"] == full["status"] == "ok" and gram["sampling"] == "under"
    assert gram["eigenvalues"].shape == full["eigenvalues"].shape == (96,)
    np.testing.assert_allclose(gram["eigenvalues"][:29], full["eigenvalues"][:29], rtol=1e-9)
    for key in METRICS:
        assert _close(gram[key], full[key], 1e-6), key  # α < 1 feels round-off eigenvalues
        assert _close(gram[key], ref[key], 1e-6), key


def test_record_keys_are_the_contract():
    rec = spectral_records(torch.randn(50, 8), renyi_alphas=(0.5, 3, math.inf))[0]
    assert list(rec) == [
        "step", "layer", "site", "bucket", "soft_rank", "hard_rank", "entropy", "eee", "js",
        "renyi_0.5", "renyi_3", "renyi_inf", "n_rows", "dim", "n_over_d", "sampling", "status",
        "spectrum", "min_eig", "neg_mass",
    ]
    assert rec["spectrum"] is True
