"""Probes on modules with the contract names give the one-shot records, and cost nothing when off."""

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn as nn

from specsweep.metrics import attach_probes, finalize_snapshot, frequency_buckets, spectral_records

VOCAB, D_MODEL, WIDTH = 10, 12, 24
COUNTS = np.array([30, 2, 25, 1, 12, 0, 10, 8, 7, 5])  # HEAD {0}, MID {2, 4}, TAIL the rest


class TinyFFN(nn.Module):
    def __init__(self, gated: bool, act) -> None:
        super().__init__()
        self.act = act
        self.gate = nn.Linear(D_MODEL, WIDTH, bias=False) if gated else None
        self.up = nn.Linear(D_MODEL, WIDTH, bias=False)
        self.down = nn.Linear(WIDTH, D_MODEL, bias=False)

    def forward(self, x):
        h = self.act(self.gate(x)) * self.up(x) if self.gate is not None else self.act(self.up(x))
        return self.down(h)


class TinyBlock(nn.Module):
    def __init__(self, gated: bool, act) -> None:
        super().__init__()
        self.ffn = TinyFFN(gated, act)

    def forward(self, x):
        return x + self.ffn(x)


class TinyLM(nn.Module):
    def __init__(self, n_layer: int = 2, gated: bool = False, act=lambda h: torch.relu(h).square()) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, D_MODEL)
        self.wpe = nn.Embedding(64, D_MODEL)  # rows of one token differ by position, as in an LM
        self.blocks = nn.ModuleList(TinyBlock(gated, act) for _ in range(n_layer))

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return x


def _micro_batches(n: int = 3, b: int = 4, s: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (b, s), generator=g) for _ in range(n)]


def _capture_by_hand(model: TinyLM, batches, gated: bool):
    """Independent capture: the activations the probe is supposed to see, per layer."""
    acts = {(i, site): [] for i in range(len(model.blocks)) for site in ("pre", "post")}
    handles = []
    for i, block in enumerate(model.blocks):
        pre_mod = block.ffn.gate if gated else block.ffn.up
        handles.append(pre_mod.register_forward_hook(lambda m, a, o, i=i: acts[(i, "pre")].append(o.detach())))
        handles.append(
            block.ffn.down.register_forward_pre_hook(lambda m, a, i=i: acts[(i, "post")].append(a[0].detach()))
        )
    with torch.no_grad():
        for idx in batches:
            model(idx)
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in acts.items()}


def _assert_same_records(got, want, rtol):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if key in ("min_eig", "neg_mass") and value is not None:
                assert abs(a[key] - value) < rtol  # round-off level (eigenvalues are O(1)): absolute
            elif isinstance(value, float) and a[key] is not None:
                assert a[key] == pytest.approx(value, rel=rtol, abs=1e-300), (a["layer"], a["site"], a["bucket"], key)
            else:
                assert a[key] == value, key


@pytest.mark.parametrize("gated", [False, True])
def test_probe_records_equal_one_shot_on_captured_activations(gated):
    torch.manual_seed(0)
    model = TinyLM(gated=gated)
    table = frequency_buckets(COUNTS)
    batches = _micro_batches()
    probe = attach_probes(model, bucket_of_token=table, min_bucket_rows=30, accum_dtype=torch.float64)
    expected_pre = "gate" if gated else "up"
    assert probe.modules[(1, "pre")][0] == f"blocks.1.ffn.{expected_pre}"
    assert probe.modules[(1, "post")][0] == "blocks.1.ffn.down"
    with probe.capturing():
        for idx in batches:  # gradient-accumulation micro-batches, with backward
            probe.set_tokens(idx)
            model(idx).square().mean().backward()
    records = probe.compute(step=7)

    acts = _capture_by_hand(model, batches, gated)
    ids = torch.cat(batches)
    want = []
    for layer in (0, 1):
        want += spectral_records(
            {"pre": acts[(layer, "pre")], "post": acts[(layer, "post")]}, ids, table,
            step=7, layer=layer, min_bucket_rows=30,
        )
    assert {r["status"] for r in records} == {"ok"}
    assert len(records) == 2 * 2 * 4
    _assert_same_records(records, want, rtol=1e-6)
    # fp32 default policy: within 1e-3 of the float64 records
    probe32 = attach_probes(model, bucket_of_token=table, min_bucket_rows=30)
    with probe32.capturing():
        for idx in batches:
            probe32.set_tokens(idx)
            model(idx)
    _assert_same_records(probe32.compute(step=7), want, rtol=1e-3)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_probe_costs_nothing_when_inactive():
    model = TinyLM()
    idx = _micro_batches(1)[0]
    before = model(idx)
    probe = attach_probes(model, bucket_of_token=frequency_buckets(COUNTS))
    assert _hook_count(model) == 0 and not probe.active
    probe.set_tokens(idx)  # a no-op outside capturing(): the loop may call it every step
    assert torch.equal(model(idx), before)
    with probe.capturing():
        assert _hook_count(model) == 4 and probe.active
        probe.set_tokens(idx)
        assert torch.equal(model(idx), before)  # probes never change the forward
    assert _hook_count(model) == 0
    probe.detach()
    assert _hook_count(model) == 0


def test_subsample_uses_identical_rows_for_pre_and_post():
    # identity activation: post == pre row for row, so same rows <=> identical spectra, JS = 0
    model = TinyLM(act=lambda h: h)
    probe = attach_probes(model, subsample=0.5, accum_dtype=torch.float64, seed=3)
    with probe.capturing():
        for idx in _micro_batches(2, b=6, s=20):
            probe.set_tokens(idx)
            model(idx)
    for layer in (0, 1):
        pre, post = [r for r in probe.compute(step=0) if r["layer"] == layer] if layer == 0 else (None, None)
        if pre is None:
            break
        assert pre["n_rows"] == post["n_rows"] == 2 * 3 * 20
        assert pre["soft_rank"] == pytest.approx(post["soft_rank"], rel=1e-12)
        assert post["js"] == pytest.approx(0.0, abs=1e-12)


def test_repeated_forward_for_one_batch_is_ignored():
    # activation-checkpoint recompute re-runs the forward hooks: rows must not be counted twice
    model = TinyLM()
    probe = attach_probes(model, bucket_of_token=frequency_buckets(COUNTS), min_bucket_rows=1)
    idx = _micro_batches(1)[0]
    with probe.capturing():
        probe.set_tokens(idx)
        model(idx)
        model(idx)
    assert probe.ignored_forwards == 4
    assert {r["n_rows"] for r in probe.compute(0) if r["bucket"] == "global"} == {idx.numel()}
    with probe.capturing(), pytest.raises(RuntimeError, match="set_tokens"):
        model(idx)  # buckets need the token ids


def test_snapshot_finalize_in_background_equals_sync():
    model = TinyLM()
    batches = _micro_batches()
    probe = attach_probes(model, bucket_of_token=frequency_buckets(COUNTS), min_bucket_rows=30, keep_eigenvalues=True)

    def capture():
        with probe.capturing():
            for idx in batches:
                probe.set_tokens(idx)
                model(idx)

    capture()
    sync = probe.compute(step=1)
    capture()
    # The snapshot is plain data: finalized later in a worker thread it gives the same records.
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(finalize_snapshot, probe.snapshot(step=1))  # the snapshot resets the accumulators
        assert probe.collector.acc[(0, "pre", "tail")].n == 0
        background = future.result()
    assert {r["status"] for r in sync} == {"ok"}
    for a, b in zip(sync, background):
        np.testing.assert_allclose(a.pop("eigenvalues"), b.pop("eigenvalues"), rtol=1e-12)
    assert sync == background


@pytest.mark.slow
def test_process_finalizer_equals_sync():
    snap_records = spectral_records(torch.randn(3, 40, 16))
    model = TinyLM()
    probe = attach_probes(model)
    with probe.capturing():
        model(_micro_batches(1)[0])
    snap = probe.snapshot(step=0)
    want = finalize_snapshot(snap)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # pickled across
        got = pool.submit(finalize_snapshot, snap).result()
    assert got == want and snap_records[0]["status"] == "ok"


def test_probes_on_models_gpt():
    from specsweep.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=16, context_len=32))
    probe = attach_probes(model, bucket_of_token=frequency_buckets(COUNTS), min_bucket_rows=20)
    assert sorted(probe.modules) == [(0, "post"), (0, "pre"), (1, "post"), (1, "pre")]
    idx = torch.randint(0, VOCAB, (8, 32))
    with probe.capturing():
        probe.set_tokens(idx)
        model(idx, idx)
    records = probe.compute(step=1)
    assert len(records) == 2 * 4 * 2
    assert all(r["status"] == "ok" and r["dim"] == 64 and math.isfinite(r["soft_rank"]) for r in records)
