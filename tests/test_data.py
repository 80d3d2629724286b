"""specsweep.sweep.data: shard format, synthetic corpus, local text, preparation cache, batch loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from specsweep.sweep.data import cache as prep_mod
from specsweep.sweep.data import tokenizer as tokenizer_mod
from specsweep.sweep.data.cache import prepare_dataset
from specsweep.sweep.data.loader import TokenBatches
from specsweep.sweep.data.prepared import PreparedData
from specsweep.sweep.data.shards import HEADER_BYTES, MAGIC, check_vocab_fits, open_shard, read_header, write_shard
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.data.synthetic import SyntheticConfig, build_chain, entropy_stats, generate_tokens
from specsweep.sweep.data.tokenizer import EOT_TEXT, ByteTokenizer, train_bpe
from specsweep.sweep.errors import DataError, UserError
from tests.conftest import ROOT, SHAKESPEARE


def regime_shares(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Occurrence-mass tertiles as in paper-notes §3: (tokens per regime, share of occurrences)."""
    ordered = np.sort(counts)[::-1]
    cum = np.cumsum(ordered)
    h = max(int((cum <= 0.33 * cum[-1]).sum()), 1)
    m = int((cum <= 0.67 * cum[-1]).sum())
    head_min, mid_min = ordered[h - 1], ordered[m - 1]
    regime = np.where(counts >= head_min, 0, np.where(counts >= mid_min, 1, 2))
    n_tokens = np.bincount(regime, minlength=3)
    return n_tokens, np.bincount(regime, weights=counts, minlength=3) / counts.sum()


# ---------------------------------------------------------------- shards

def test_shard_round_trip_header_and_size(tmp_path: Path) -> None:
    tokens = np.random.default_rng(0).integers(0, 65536, size=1000)
    path = write_shard(tmp_path / "a.bin", tokens)
    assert path.stat().st_size == HEADER_BYTES + 2 * 1000
    header = np.fromfile(path, dtype="<i4", count=256)
    assert (header[0], header[1], header[2]) == (MAGIC, 1, 1000) and not header[3:].any()
    assert read_header(path).n_tokens == 1000
    np.testing.assert_array_equal(open_shard(path), tokens)
    assert not [p for p in tmp_path.iterdir() if p.name != "a.bin"]  # no temp files left
    assert open_shard(write_shard(tmp_path / "empty.bin", np.zeros(0, np.int64))).size == 0


@pytest.mark.parametrize("damage", ["truncated", "header_only", "trailing", "magic", "version"])
def test_corrupt_shard_is_detected_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = write_shard(tmp_path / "shard_000.bin", np.arange(500))
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[:-10]
    elif damage == "header_only":
        raw = raw[:100]
    elif damage == "trailing":
        raw += b"\0\0\0\0"
    elif damage == "magic":
        raw[0:4] = np.int32(12345).tobytes()
    else:
        raw[4:8] = np.int32(7).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="shard_000.bin"):
        open_shard(path)


def test_vocab_over_uint16_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint16"):
        write_shard(tmp_path / "x.bin", np.array([1, 70000]))
    with pytest.raises(ValueError, match="uint16"):
        check_vocab_fits(70000)
    with pytest.raises(ValueError, match="uint16"):
        prepare_dataset(DataSpec(kind="synthetic", vocab_size=70000, train_tokens=1000), tmp_path)
    check_vocab_fits(65536)  # ids 0..65535 fit


# ---------------------------------------------------------------- synthetic corpus

def test_synthetic_is_deterministic_and_seeded() -> None:
    cfg = SyntheticConfig(vocab_size=512, seed=3)
    a, b = generate_tokens(cfg, 50_000), generate_tokens(cfg, 50_000)
    assert a.dtype == np.uint16 and a.shape == (50_000,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, generate_tokens(SyntheticConfig(vocab_size=512, seed=4), 50_000))


@pytest.mark.parametrize("exponent", [0.9, 1.1, 1.3])
def test_synthetic_rank_frequency_follows_zipf(exponent: float) -> None:
    cfg = SyntheticConfig(vocab_size=2048, zipf_exponent=exponent)
    counts = np.bincount(generate_tokens(cfg, 400_000), minlength=2048)
    ordered = np.sort(counts)[::-1]
    fit = ordered >= 50  # ranks with enough occurrences for a stable log
    slope = np.polyfit(np.log(np.arange(1, 2049)[fit]), np.log(ordered[fit]), 1)[0]
    assert fit.sum() > 100
    assert abs(-slope - exponent) < 0.1, slope


@pytest.mark.parametrize("vocab,exponent", [(512, 1.1), (2048, 1.0)])
def test_synthetic_has_three_regimes_with_a_third_of_the_mass(vocab: int, exponent: float) -> None:
    counts = np.bincount(generate_tokens(SyntheticConfig(vocab_size=vocab, zipf_exponent=exponent), 300_000),
                         minlength=vocab)
    n_tokens, shares = regime_shares(counts)
    assert (n_tokens > 0).all() and n_tokens[0] < n_tokens[1] < n_tokens[2]
    assert np.all(np.abs(shares - 1 / 3) < 0.08), shares


def test_synthetic_has_learnable_structure() -> None:
    cfg = SyntheticConfig(vocab_size=512, zipf_exponent=1.1)
    stats = entropy_stats(build_chain(cfg))
    assert stats["entropy_rate"] < stats["unigram_entropy"] - 1.5
    # A bigram table counted on train predicts held-out tokens far better than the unigram law.
    tokens = generate_tokens(cfg, 400_000).astype(np.int64)
    train, val = tokens[:350_000], tokens[350_000:]
    V = cfg.vocab_size
    table = np.bincount(train[:-1] * V + train[1:], minlength=V * V).reshape(V, V) + 0.1
    bigram = -np.log(table[val[:-1], val[1:]] / table[val[:-1]].sum(1)).mean()
    uni = np.bincount(train, minlength=V) + 0.1
    unigram = -np.log(uni[val[1:]] / uni.sum()).mean()
    assert bigram < unigram - 1.0, (bigram, unigram)


# ---------------------------------------------------------------- tokenizers and text preparation

def test_byte_and_bpe_round_trip() -> None:
    text = SHAKESPEARE.read_text(encoding="utf-8")[:200_000] + " héllo wörld ✓\n"
    byte = ByteTokenizer()
    assert byte.decode(byte.encode(text)) == text
    assert byte.decode([104, 105, byte.eot_id, 33]) == "hi" + EOT_TEXT + "!"
    bpe = train_bpe([text], 600)
    assert bpe.vocab_size == 600 and bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(text)) < len(byte.encode(text)) / 2


@pytest.fixture(scope="module")
def bpe_prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    return prepare_dataset(DataSpec(kind="text", path=str(SHAKESPEARE), tokenizer="bpe", vocab_size=1024),
                           tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_text_preparation(tokenizer: str, bpe_prepared: PreparedData, tmp_path: Path) -> None:
    data = bpe_prepared if tokenizer == "bpe" else prepare_dataset(
        DataSpec(kind="text", path=str(SHAKESPEARE), tokenizer="byte", val_fraction=0.1), tmp_path)
    tok = data.tokenizer()
    text = SHAKESPEARE.read_text(encoding="utf-8")
    train, val = open_shard(data.train_paths[0]), open_shard(data.val_paths[0])
    total = train.size + val.size
    assert val.size == round((0.1 if tokenizer == "byte" else 0.05) * total)
    assert (data.n_train_tokens, data.n_val_tokens) == (train.size, val.size)
    assert train[0] == tok.eot_id == data.eot_id  # EOT opens every document
    stream = np.concatenate([train, val])
    assert tok.decode(stream) == EOT_TEXT + text
    counts = data.counts()
    assert counts.dtype == np.int64 and counts.size == data.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(counts, np.bincount(train, minlength=data.vocab_size))
    meta = json.loads((data.root / "meta.json").read_text())
    assert meta["tokenizer"]["name"] == tokenizer and meta["spec"]["kind"] == "text"
    if tokenizer == "bpe":
        assert (data.root / "tokenizer.json").is_file() and data.vocab_size == 1024


def test_text_folder_documents_are_separated_by_eot(tmp_path: Path) -> None:
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    docs = {"a.txt": "first doc\n" * 200, "b.txt": "second\n" * 300, "sub/c.txt": "third one " * 100}
    for name, body in docs.items():
        (src / name).write_text(body)
    (src / "ignored.md").write_text("not text data")
    data = prepare_dataset(DataSpec(kind="text", path=str(src), val_tokens=100), tmp_path / "cache")
    stream = np.concatenate([open_shard(p) for p in data.train_paths + data.val_paths])
    assert data.n_val_tokens == 100 and data.meta["documents"] == 3
    assert data.tokenizer().decode(stream) == "".join(EOT_TEXT + body for body in docs.values())


def test_missing_inputs_raise_data_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt"):
        prepare_dataset(DataSpec(kind="text", path=str(missing)), tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        prepare_dataset(DataSpec(kind="text", path=str(tmp_path / "empty")), tmp_path / "cache")
    with pytest.raises(DataError, match="no_shards"):
        prepare_dataset(DataSpec(kind="shards", path=str(tmp_path / "no_shards")), tmp_path / "cache")
    with pytest.raises(DataError, match="gone.bin"):
        TokenBatches(tmp_path / "gone.bin", 2, 8, seed=0)
    with pytest.raises(ValueError, match="typo"):
        DataSpec.from_mapping({"kind": "synthetic", "typo": 1})


# ---------------------------------------------------------------- preparation cache

SMALL = DataSpec(kind="synthetic", vocab_size=512, zipf_exponent=1.1, train_tokens=100_000, val_tokens=8192)


def test_synthetic_preparation_and_idempotent_reuse(tmp_path: Path) -> None:
    data = prepare_dataset(SMALL, tmp_path)
    assert data.root.parent == tmp_path and data.root.name.startswith("synthetic-")
    assert (data.n_train_tokens, data.n_val_tokens, data.vocab_size) == (100_000, 8192, 512)
    np.testing.assert_array_equal(data.counts(), np.bincount(open_shard(data.train_paths[0]), minlength=512))
    assert data.eot_id is None and data.tokenizer() is None
    assert data.meta["stats"]["entropy_rate"] < data.meta["stats"]["unigram_entropy"]
    stamp = (data.root / "train.bin").stat().st_mtime_ns
    again = prepare_dataset(SMALL, tmp_path)
    assert again.root == data.root and (again.root / "train.bin").stat().st_mtime_ns == stamp
    assert prepare_dataset(DataSpec(**{**SMALL.__dict__, "seed": 1}), tmp_path).root != data.root
    # Fields that do not apply to the kind do not change the folder.
    assert prepare_dataset(DataSpec(**{**SMALL.__dict__, "tokenizer": "bpe"}), tmp_path).root == data.root
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".locks")) == sorted(
        [data.root.name, prepare_dataset(DataSpec(**{**SMALL.__dict__, "seed": 1}), tmp_path).root.name])


_CHILD = """
import sys
from specsweep.sweep.data.cache import prepare_dataset
from specsweep.sweep.data.spec import DataSpec
spec = DataSpec(kind="synthetic", vocab_size=512, zipf_exponent=1.1, train_tokens=100_000, val_tokens=8192)
print(prepare_dataset(spec, sys.argv[1]).root)
"""


def test_concurrent_preparation_from_two_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]  # hang guard (a lock never released); either may win
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    roots = {out.strip() for out, _ in outs}
    assert len(roots) == 1
    folders = [p for p in tmp_path.iterdir() if p.name != ".locks"]
    assert [str(p) for p in folders] == list(roots)  # one folder, no temp leftovers
    assert PreparedData.load(folders[0]).root == prepare_dataset(SMALL, tmp_path).root


def test_rename_race_without_a_lock_keeps_the_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Where flock does not work, two builders can both finish; the second rename must lose cleanly.
    monkeypatch.setattr(prep_mod, "_lock", lambda path: nullcontext())
    build = prep_mod._BUILDERS["synthetic"]
    calls = []

    def racing_build(spec, folder):
        calls.append(folder)
        if len(calls) == 1:
            winner.append(prepare_dataset(spec, tmp_path))  # the other process finishes first
        return build(spec, folder)

    winner: list[PreparedData] = []
    monkeypatch.setitem(prep_mod._BUILDERS, "synthetic", racing_build)
    data = prepare_dataset(SMALL, tmp_path)
    assert data.root == winner[0].root and len(calls) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name != ".locks"] == [data.root.name]


def test_damaged_prepared_folder_is_reported(tmp_path: Path) -> None:
    data = prepare_dataset(SMALL, tmp_path)
    path = data.train_paths[0]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train.bin"):
        prepare_dataset(SMALL, tmp_path)


def test_existing_shards_are_read_as_they_are(tmp_path: Path) -> None:
    src = tmp_path / "fineweb10B"
    src.mkdir()
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 300, size=n) for n in (5000, 7000)]
    for i, t in enumerate(train):
        write_shard(src / f"fineweb_train_{i + 1:06d}.bin", t)
    write_shard(src / "fineweb_val_000000.bin", rng.integers(0, 300, size=3000))
    data = prepare_dataset(DataSpec(kind="shards", path=str(src), vocab_size=320), tmp_path / "cache")
    assert data.train_paths == sorted(src.glob("*train*.bin")) and data.n_train_tokens == 12000
    np.testing.assert_array_equal(data.counts(), np.bincount(np.concatenate(train), minlength=320))
    # A folder that is already prepared is used in place.
    assert prepare_dataset(DataSpec(kind="shards", path=str(data.root)), tmp_path / "other").root == data.root


def test_cache_folder_names_do_not_change(tmp_path: Path) -> None:
    # The folder name hashes what determines the bytes; reading options (data.order, data.eval_tokens)
    # and code moves must not change it, or every cache prepared before is built again.
    assert prepare_dataset(SMALL, tmp_path).root.name == "synthetic-1bfbd3ef9179"
    sequential = DataSpec(**{**SMALL.__dict__, "order": "sequential", "eval_tokens": 4096})
    assert prepare_dataset(sequential, tmp_path).root.name == "synthetic-1bfbd3ef9179"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("to be or not to be\n" * 300)
    (corpus / "b.txt").write_text("that is the question\n" * 200)
    assert prepare_dataset(DataSpec(kind="text", path=str(corpus), val_tokens=100), tmp_path).root.name == \
        "text-72c560bc8004"


def test_a_bpe_trained_on_part_of_the_text_has_its_own_cache_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A local BPE learns from the text's first BPE_TRAIN_CHARS characters (data=local's rule): a text
    # of more bytes than that is keyed by the limit; a shorter one, trained on all of it, is not.
    spec = DataSpec(kind="text", path=str(SHAKESPEARE), tokenizer="bpe", vocab_size=300)
    whole = prepare_dataset(spec, tmp_path)
    assert "bpe_train_chars" not in whole.meta["key"]
    monkeypatch.setattr(prep_mod, "BPE_TRAIN_CHARS", 10_000)
    monkeypatch.setattr(tokenizer_mod, "BPE_TRAIN_CHARS", 10_000)
    part = prepare_dataset(spec, tmp_path)
    assert part.root != whole.root and part.meta["key"]["bpe_train_chars"] == 10_000
    assert (part.root / "tokenizer.json").read_bytes() != (whole.root / "tokenizer.json").read_bytes()


def _damaged_meta(tmp_path: Path) -> tuple[Callable[[], Any], Path]:
    (tmp_path / "meta.json").write_text("{not json")
    return lambda: PreparedData.load(tmp_path), tmp_path / "meta.json"


def _truncated_shard(tmp_path: Path) -> tuple[Callable[[], Any], Path]:
    path = write_shard(tmp_path / "train_000.bin", np.arange(1000))
    path.write_bytes(path.read_bytes()[:-3])
    return lambda: TokenBatches(path, 2, 8, seed=0), path


def _latin1_text(tmp_path: Path) -> tuple[Callable[[], Any], Path]:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café ".encode("latin-1") * 100)
    return lambda: prepare_dataset(DataSpec(kind="text", path=str(path)), tmp_path / "cache"), path


def _missing_text(tmp_path: Path) -> tuple[Callable[[], Any], Path]:
    path = tmp_path / "nope.txt"
    return lambda: prepare_dataset(DataSpec(kind="text", path=str(path)), tmp_path / "cache"), path


def _unknown_tokenizer(tmp_path: Path) -> tuple[Callable[[], Any], Path]:
    from specsweep.sweep.data.streaming import prepare_corpus

    (tmp_path / "doc.txt").write_text("hello world " * 100)
    spec = DataSpec(kind="shards", source=str(tmp_path / "doc.txt"), path=str(tmp_path / "out"),
                    tokenizer="sentencepiece", val_tokens=10)
    return lambda: prepare_corpus(spec, workers=0), Path("sentencepiece")


@pytest.mark.parametrize("case", [_damaged_meta, _truncated_shard, _latin1_text, _missing_text, _unknown_tokenizer])
def test_data_problems_are_short_user_errors_naming_the_file(tmp_path: Path, case) -> None:
    # One error type: a DataError (a UserError, printed by Hydra as its message alone) naming the file.
    # A damaged meta.json used to escape as a bare JSONDecodeError, a bad tokenizer as a RuntimeError.
    call, culprit = case(tmp_path)
    with pytest.raises(UserError) as err:
        call()
    assert isinstance(err.value, DataError) and str(culprit) in str(err.value)


# ---------------------------------------------------------------- loader

@pytest.fixture
def positions(tmp_path: Path) -> Path:
    """A shard whose token at position i is i, so rows reveal where they were cut."""
    return write_shard(tmp_path / "pos.bin", np.arange(60_000))


def test_loader_is_stateless_and_deterministic(positions: Path) -> None:
    a = TokenBatches(positions, batch_size=8, seq_len=32, seed=5)
    b = TokenBatches(positions, batch_size=8, seq_len=32, seed=5)
    for k in (0, 7, 123456):
        xa, ya = a.get(k)
        xb, yb = b.get(k)
        assert xa.dtype == ya.dtype == torch.int64 and xa.shape == (8, 32)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(ya[:, :-1], xa[:, 1:]) and torch.equal(ya[:, -1], xa[:, -1] + 1)
    assert not torch.equal(a.get(0)[0], a.get(1)[0])
    assert not torch.equal(a.get(0)[0], TokenBatches(positions, 8, 32, seed=6).get(0)[0])
    assert torch.equal(a.get(3)[0], a.get(3)[0])  # no hidden state advanced by get


def test_ranks_draw_disjoint_rows(positions: Path) -> None:
    ranks = [TokenBatches(positions, 16, 32, seed=0, rank=r, world_size=4) for r in range(4)]
    for k in range(5):
        starts = sorted(torch.cat([t.get(k)[0][:, 0] for t in ranks]).tolist())
        assert len(starts) == 64
        assert min(b - a for a, b in zip(starts, starts[1:])) >= 32  # no two rows share an input token
    assert not torch.equal(ranks[0].get(0)[0], ranks[1].get(0)[0])


def test_multiple_shards_windows_stay_inside_a_shard(tmp_path: Path) -> None:
    paths = [write_shard(tmp_path / f"s{i}.bin", np.arange(i * 20_000, i * 20_000 + n))
             for i, n in enumerate((5_000, 12_000, 3_000))]
    loader = TokenBatches(paths, batch_size=32, seq_len=64, seed=1)
    used = set()
    for k in range(20):
        x, y = loader.get(k)
        shard = torch.div(x[:, :1], 20_000, rounding_mode="floor")
        assert torch.equal(torch.div(y, 20_000, rounding_mode="floor"), shard.expand_as(y))
        used |= set(shard.flatten().tolist())
    assert used == {0, 1, 2}


def test_probe_and_eval_batches_are_fixed(positions: Path) -> None:
    val = TokenBatches(positions, batch_size=4, seq_len=16, seed=0)
    p1, p2 = val.probe_batch(), TokenBatches(positions, 4, 16, seed=0).probe_batch()
    assert torch.equal(p1[0], p2[0]) and val.probe_batch(10)[0].shape == (10, 16)
    e1, e2 = val.eval_batches(3), val.eval_batches(3)
    assert len(e1) == 3 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(e1, e2))
    assert e1[0][0][0, 0] == 0  # eval reads the stream from its start, window after window
    with pytest.raises(ValueError, match="windows"):
        val.eval_batches(10_000)
