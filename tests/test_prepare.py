"""sweep.prepare / sweep.data.streaming: streamed preparation of real corpora into token shards (offline)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from specsweep.sweep.data import documents, streaming
from specsweep.sweep.data.cache import prepare_dataset
from specsweep.sweep.data.checks import check_data
from specsweep.sweep.data.prepared import META_FILE, PROGRESS_FILE, PreparedData
from specsweep.sweep.data.shards import HEADER_BYTES, MAGIC, open_shard, read_header, write_shard
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.data.streaming import prepare_corpus
from specsweep.sweep.data.tokenizer import (
    BPETokenizer, ByteTokenizer, TiktokenTokenizer, TokenizerUnavailable, load_tokenizer,
)
from specsweep.sweep.errors import DataError
from tests.conftest import ROOT, SHAKESPEARE, run_train

needs_datasets = pytest.mark.skipif(
    find_spec("datasets") is None or find_spec("pyarrow") is None,
    reason="the `datasets` package is not installed (pip install -e '.[data]')")
BYTE = ByteTokenizer()


def _gpt2_unavailable() -> str | None:
    if find_spec("tiktoken") is None:
        return "the `tiktoken` package is not installed (pip install -e '.[data]')"
    try:
        TiktokenTokenizer().load()
    except TokenizerUnavailable:
        return "tiktoken's GPT-2 vocabulary cannot be loaded here (no internet, no TIKTOKEN_CACHE_DIR copy)"
    return None


@pytest.fixture(autouse=True)
def offline_hf(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """`datasets` must never reach the network, nor write to the user's cache."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------- sources and the direct computation

def _docs(seed: int, n: int) -> list[str]:
    """Documents of varied length, some non-ASCII, drawn from Shakespeare-like words."""
    rng = np.random.default_rng(seed)
    words = ["the", "king", "and", "queen", "of", "naples", "speak", "thou", "wörld", "–", "héllo", "✓",
             "ROMEO:", "\n", "a", "sweet", "rose", "by", "any", "other", "name"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 400)))) for _ in range(n)]


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A folder of .txt (one document each), .jsonl and .parquet files, and its documents in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("mixed")
    (root / "sub").mkdir()
    a, b, c, d, e = _docs(1, 1)[0], _docs(2, 80), _docs(3, 120), _docs(4, 1)[0], _docs(5, 1)[0]
    (root / "a.txt").write_text(a, encoding="utf-8")
    with open(root / "b.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(b):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    pq.write_table(pa.table({"text": c, "n": list(range(len(c)))}), root / "c.parquet", row_group_size=16)
    (root / "d.txt").write_text(d, encoding="utf-8")
    (root / "sub" / "e.txt").write_text(e, encoding="utf-8")
    (root / "notes.md").write_text("ignored: not a corpus file type")
    return root, [a, *b, *c, d, e]  # sorted paths: a.txt, b.jsonl, c.parquet, d.txt, sub/e.txt


def expected_stream(docs: list[str], tok=BYTE) -> np.ndarray:
    """EOT followed by each document's tokens, computed directly (no datasets, no workers)."""
    parts = []
    for text in docs:
        parts += [[tok.eot_id], tok.encode(text)]
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


def direct_regimes(counts: np.ndarray) -> tuple[int, int, list[int], list[float]]:
    """Paper-notes §3 occurrence-mass tertiles, written out independently of metrics.buckets."""
    ordered = np.sort(counts)[::-1]
    cum = np.cumsum(ordered)
    h = max(int((cum <= 0.33 * cum[-1]).sum()), 1)
    m = max(int((cum <= 0.67 * cum[-1]).sum()), h)
    head_min, mid_min = int(ordered[h - 1]), int(ordered[m - 1])
    regime = np.where(counts >= head_min, 0, np.where(counts >= mid_min, 1, 2))
    return head_min, mid_min, np.bincount(regime, minlength=3).tolist(), \
        (np.bincount(regime, weights=counts, minlength=3) / counts.sum()).tolist()


def spec_for(src: Path, out: Path, **kw) -> DataSpec:
    base = dict(kind="shards", name="local", source=str(src), path=str(out), tokenizer="byte",
                val_tokens=30_000, shard_tokens=50_000)
    return DataSpec(**{**base, **kw})


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes (meta.json without its timing/creation stamps)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name == META_FILE:
            meta = json.loads(p.read_text())
            meta.pop("timing"), meta.pop("created"), meta.pop("spec")  # when, how fast, the config as given
            out[p.name] = json.dumps(meta, sort_keys=True).encode()
        else:
            out[p.name] = p.read_bytes()
    return out


def check_against_direct(data: PreparedData, docs: list[str], val_tokens: int, shard_tokens: int,
                         tok=BYTE, max_tokens: int | None = None) -> None:
    stream = expected_stream(docs, tok)
    if max_tokens is not None:
        stream = stream[:max_tokens]
    val, train = stream[:val_tokens], stream[val_tokens:]
    # Shard boundaries: fixed-size pieces of each split, the last train shard the remainder.
    assert [read_header(p).n_tokens for p in data.val_paths] == \
        [min(shard_tokens, val_tokens - i) for i in range(0, val_tokens, shard_tokens)]
    assert [read_header(p).n_tokens for p in data.train_paths] == \
        [min(shard_tokens, train.size - i) for i in range(0, train.size, shard_tokens)]
    assert [p.name for p in data.train_paths] == [f"train_{i:06d}.bin" for i in range(len(data.train_paths))]
    for p in data.val_paths + data.train_paths:
        header = np.fromfile(p, dtype="<i4", count=256)
        assert (header[0], header[1]) == (MAGIC, 1) and not header[3:].any()
        assert p.stat().st_size == HEADER_BYTES + 2 * int(header[2])
    np.testing.assert_array_equal(np.concatenate([open_shard(p) for p in data.val_paths]), val)
    np.testing.assert_array_equal(np.concatenate([open_shard(p) for p in data.train_paths]), train)
    assert (data.n_val_tokens, data.n_train_tokens) == (val.size, train.size)
    assert data.vocab_size == tok.vocab_size and data.eot_id == tok.eot_id
    assert data.meta["documents"] == len(docs) or max_tokens is not None
    # Frequency table: counts over the training shards only, thresholds and summary.
    counts = np.bincount(train, minlength=tok.vocab_size)
    np.testing.assert_array_equal(data.counts(), counts)
    freq = json.loads((data.root / "frequency.json").read_text())
    head_min, mid_min, sizes, shares = direct_regimes(counts)
    assert (freq["head_min"], freq["mid_min"], freq["total_tokens"]) == (head_min, mid_min, train.size)
    assert [freq["buckets"][b]["tokens"] for b in ("head", "mid", "tail")] == sizes
    np.testing.assert_allclose([freq["buckets"][b]["share"] for b in ("head", "mid", "tail")], shares)
    assert sum(freq["buckets"][b]["occurrences"] for b in ("head", "mid", "tail")) == train.size
    assert not (data.root / PROGRESS_FILE).exists()
    assert not [p for p in data.root.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------- preparation through `datasets`

@needs_datasets
def test_tinyshakespeare_txt_matches_direct_tokenization(tmp_path: Path) -> None:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    data = prepare_corpus(spec_for(SHAKESPEARE, tmp_path / "out", val_tokens=120_000, shard_tokens=400_000),
                          workers=0)
    check_against_direct(data, [text], 120_000, 400_000)
    assert data.meta["documents"] == 1 and len(data.train_paths) == 3
    # The folder reads as it is, through the existing reader and the trainer's entry point.
    assert prepare_dataset(spec_for(SHAKESPEARE, tmp_path / "out"), tmp_path / "cache").root == data.root
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_both_routes_to_local_text_give_the_same_tokens(tokenizer: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # data=text and data=local find, read, tokenize and encode .txt files by the same functions,
    # neither with the optional `datasets` package; only the layout of the splits differs.
    monkeypatch.setitem(sys.modules, "datasets", None)  # importing it raises ImportError
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    for name, text in {"b.txt": _docs(6, 1)[0], "a.txt": _docs(7, 1)[0], "sub/c.txt": "ünï ✓ " * 50,
                       ".hidden.txt": "no document", "notes.md": "no document"}.items():
        (src / name).write_text(text, encoding="utf-8")
    kw = dict(tokenizer=tokenizer, vocab_size=300, val_tokens=200)
    text = prepare_dataset(DataSpec(kind="text", path=str(src), **kw), tmp_path / "cache")
    local = prepare_corpus(spec_for(src, tmp_path / "local", shard_tokens=1_000, **kw), workers=0)
    docs = [(src / name).read_text(encoding="utf-8") for name in ("a.txt", "b.txt", "sub/c.txt")]
    tok = text.tokenizer()
    stream = expected_stream(docs, tok)
    np.testing.assert_array_equal(np.concatenate([open_shard(p) for p in text.train_paths + text.val_paths]), stream)
    check_against_direct(local, docs, 200, 1_000, tok=tok)
    assert text.meta["documents"] == local.meta["documents"] == 3
    if tokenizer == "bpe":
        assert (text.root / "tokenizer.json").read_bytes() == (local.root / "tokenizer.json").read_bytes()


@needs_datasets
@pytest.mark.parametrize("val_tokens,shard_tokens,max_tokens", [(30_000, 50_000, None), (70_000, 25_000, None),
                                                                (10_000, 8_000, 60_001)])
def test_mixed_folder_matches_direct_tokenization(mixed_folder, tmp_path: Path, val_tokens: int,
                                                  shard_tokens: int, max_tokens: int | None) -> None:
    root, docs = mixed_folder
    data = prepare_corpus(spec_for(root, tmp_path / "out", val_tokens=val_tokens, shard_tokens=shard_tokens,
                                   max_tokens=max_tokens), workers=0, docs_per_task=9)
    check_against_direct(data, docs, val_tokens, shard_tokens, max_tokens=max_tokens)
    assert data.meta["source"]["source"] == str(root)


@needs_datasets
def test_bpe_output_does_not_depend_on_workers_or_task_size(mixed_folder, tmp_path: Path) -> None:
    root, docs = mixed_folder
    kw = dict(tokenizer="bpe", vocab_size=400, val_tokens=5_000, shard_tokens=20_000)
    one = prepare_corpus(spec_for(root, tmp_path / "one", **kw), workers=1, docs_per_task=256)
    two = prepare_corpus(spec_for(root, tmp_path / "two", **kw), workers=2, docs_per_task=5)
    tok = one.tokenizer()
    assert isinstance(tok, BPETokenizer) and 257 < tok.vocab_size <= 400  # fewer if merges run out
    check_against_direct(one, docs, 5_000, 20_000, tok=tok)
    assert folder_bytes(one.root) == folder_bytes(two.root)
    # Preparing a complete folder again changes nothing; other settings are refused.
    stamp = (one.root / "train_000000.bin").stat().st_mtime_ns
    assert prepare_corpus(spec_for(root, tmp_path / "one", **kw), workers=0).root == one.root
    assert (one.root / "train_000000.bin").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other settings"):
        prepare_corpus(spec_for(root, tmp_path / "one", **{**kw, "shard_tokens": 10_000}), workers=0)


@needs_datasets
def test_hub_source_streams_the_named_dataset(mixed_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hf:<dataset> goes to datasets.load_dataset(name, name=subset, split=train, streaming=True)."""
    import datasets

    root, docs = mixed_folder
    calls = []
    real = datasets.load_dataset

    def fake_hub(path, name=None, split=None, streaming=False, **kw):
        calls.append((path, name, split, streaming))
        return real("parquet", data_files=[str(root / "c.parquet")], split=split, streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    spec = spec_for(Path("unused"), tmp_path / "out", source="hf:HuggingFaceFW/fineweb-edu", subset="sample-10BT",
                    val_tokens=4_000, shard_tokens=9_000)
    data = prepare_corpus(spec, workers=0)
    assert calls == [("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", True)]
    check_against_direct(data, docs[81:201], 4_000, 9_000)
    assert data.meta["source"] == {"source": "hf:HuggingFaceFW/fineweb-edu", "subset": "sample-10BT",
                                   "tokenizer": "byte", "text_field": "text"}


@needs_datasets
def test_bad_sources_are_reported(mixed_folder, tmp_path: Path) -> None:
    root, _ = mixed_folder
    with pytest.raises(DataError, match="nowhere"):
        prepare_corpus(spec_for(tmp_path / "nowhere", tmp_path / "out"), workers=0)
    with pytest.raises(DataError, match="no field 'body'"):
        prepare_corpus(spec_for(root / "b.jsonl", tmp_path / "out", text_field="body"), workers=0)
    with pytest.raises(DataError, match="val_tokens"):
        prepare_corpus(spec_for(root / "a.txt", tmp_path / "out2", val_tokens=10_000_000), workers=0)
    (tmp_path / "busy").mkdir()
    write_shard(tmp_path / "busy" / "x.bin", np.arange(10))
    with pytest.raises(DataError, match="already holds .bin files"):
        prepare_corpus(spec_for(root, tmp_path / "busy"), workers=0)


# ---------------------------------------------------------------- interruption and resume

class Killed(Exception):
    pass


@needs_datasets
@pytest.mark.parametrize("fail_at,with_state", [(1, True), (4, True), (9, True), (6, False)])
def test_interrupted_preparation_resumes_to_the_same_bytes(mixed_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          fail_at: int, with_state: bool) -> None:
    root, _ = mixed_folder
    if not with_state:  # a dataset without a resumable iterator state: the resume skips documents
        position = documents.DocumentStream.position
        monkeypatch.setattr(documents.DocumentStream, "position", lambda self: {**position(self), "state": None})
    kw = dict(val_tokens=7_000, shard_tokens=6_000)
    reference = prepare_corpus(spec_for(root, tmp_path / "ref", **kw), workers=0, docs_per_task=4)
    assert len(reference.train_paths) > 9
    real_write, calls = streaming.write_shard, []

    def failing_write(path, tokens):  # the shard file lands, then the process "dies"
        real_write(path, tokens)
        calls.append(path)
        if len(calls) == fail_at:
            raise Killed(path)

    monkeypatch.setattr(streaming, "write_shard", failing_write)
    spec = spec_for(root, tmp_path / "out", **kw)
    with pytest.raises(Killed):
        prepare_corpus(spec, workers=0, docs_per_task=4)
    out = tmp_path / "out"
    assert (out / PROGRESS_FILE).is_file() and not (out / META_FILE).exists()
    resume = json.loads((out / PROGRESS_FILE).read_text())["resume"]
    assert (resume["stream"]["state"] is not None) == (with_state and fail_at > 1)
    # The trainer refuses the unfinished folder, naming the prepare command.
    with pytest.raises(DataError, match="specsweep-prepare data=local"):
        prepare_dataset(spec, tmp_path / "cache")
    monkeypatch.setattr(streaming, "write_shard", real_write)
    # A different task size asked on resume: the recorded one is used, the bytes do not change.
    resumed = prepare_corpus(spec, workers=0, docs_per_task=7)
    assert folder_bytes(resumed.root) == folder_bytes(reference.root)
    if fail_at > 1:  # committed shards are not streamed again
        assert resumed.meta["timing"]["streamed_tokens"] <= resumed.n_train_tokens + resumed.n_val_tokens - 7_000


_KILLED_CHILD = """
import json, os, signal, sys
from specsweep.sweep.data import streaming
from specsweep.sweep.data.spec import DataSpec

real, done = streaming.write_shard, []
def write_then_die(path, tokens):
    real(path, tokens)
    done.append(path)
    if len(done) == 3:  # after the rename, before progress.json records the shard
        os.kill(os.getpid(), signal.SIGKILL)
streaming.write_shard = write_then_die
streaming.prepare_corpus(DataSpec(**json.loads(sys.argv[1])), workers=2, docs_per_task=5)
"""


@needs_datasets
def test_killed_process_resumes_with_the_cli_to_the_same_bytes(mixed_folder, tmp_path: Path) -> None:
    root, _ = mixed_folder
    reference = prepare_corpus(spec_for(root, tmp_path / "ref", val_tokens=7_000, shard_tokens=9_000), workers=0)
    out = tmp_path / "out"
    spec = dict(kind="shards", name="local", source=str(root), path=str(out), tokenizer="byte",
                val_tokens=7_000, shard_tokens=9_000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, json.dumps(spec)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)  # hang guard; it kills itself
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    progress = json.loads((out / PROGRESS_FILE).read_text())
    assert len(progress["shards"]) == 2 and (out / "train_000001.bin").is_file()  # 3rd shard unrecorded
    cli = subprocess.run(
        [sys.executable, "-m", "specsweep.sweep.prepare", "data=local", f"data.source={root}", f"data.path={out}",
         "data.tokenizer=byte", "data.val_tokens=7000", "data.shard_tokens=9000", "workers=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # hang guard
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    assert "resuming" in cli.stdout and "HEAD" in cli.stdout and cli.stdout.strip().endswith(str(out))
    assert folder_bytes(out) == folder_bytes(reference.root)


@needs_datasets
def test_changed_source_is_refused_on_resume(mixed_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, docs = mixed_folder
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "docs.jsonl", "w") as f:
        for t in docs[:150]:
            f.write(json.dumps({"text": t}) + "\n")
    real_write = streaming.write_shard

    def failing_write(path, tokens):
        real_write(path, tokens)
        if "train_000001" in str(path):
            raise Killed(path)

    monkeypatch.setattr(streaming, "write_shard", failing_write)
    spec = spec_for(src, tmp_path / "out", val_tokens=5_000, shard_tokens=5_000)
    with pytest.raises(Killed):
        prepare_corpus(spec, workers=0, docs_per_task=3)
    monkeypatch.setattr(streaming, "write_shard", real_write)
    lines = (src / "docs.jsonl").read_text().splitlines()
    lines[:40] = [json.dumps({"text": t.upper()}) for t in docs[:40]]  # same size, other documents
    (src / "docs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="source changed"):
        prepare_corpus(spec, workers=0, docs_per_task=3)


# ---------------------------------------------------------------- damaged shards

@needs_datasets
def test_truncated_or_corrupt_shard_is_named(mixed_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = mixed_folder
    data = prepare_corpus(spec_for(root, tmp_path / "done", val_tokens=7_000, shard_tokens=9_000), workers=0)
    victim = data.train_paths[1]
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(DataError, match="train_000001.bin.*truncated"):
        PreparedData.load(data.root)
    with pytest.raises(DataError, match="train_000001.bin"):
        prepare_dataset(spec_for(root, data.root), tmp_path / "cache")
    # A damaged shard of an unfinished preparation stops the resume, naming it.
    real_write = streaming.write_shard

    def failing_write(path, tokens):
        real_write(path, tokens)
        if "train_000002" in str(path):
            raise Killed(path)

    monkeypatch.setattr(streaming, "write_shard", failing_write)
    spec = spec_for(root, tmp_path / "part", val_tokens=7_000, shard_tokens=9_000)
    with pytest.raises(Killed):
        prepare_corpus(spec, workers=0)
    monkeypatch.setattr(streaming, "write_shard", real_write)
    raw = bytearray((tmp_path / "part" / "val_000000.bin").read_bytes())
    raw[0:4] = np.int32(42).tobytes()
    (tmp_path / "part" / "val_000000.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="val_000000.bin.*not a token shard"):
        prepare_corpus(spec, workers=0)


# ---------------------------------------------------------------- existing (modded-nanogpt) shards

@pytest.fixture
def fineweb_bins(tmp_path: Path) -> tuple[Path, list[np.ndarray], np.ndarray]:
    src = tmp_path / "fineweb10B"
    src.mkdir()
    rng = np.random.default_rng(0)
    vals = rng.zipf(1.3, size=6_000) % 50257
    train = [rng.zipf(1.2, size=n) % 50257 for n in (20_000, 35_000, 5_000)]
    write_shard(src / "fineweb_val_000000.bin", vals)
    for i, t in enumerate(train):
        write_shard(src / f"fineweb_train_{i + 1:06d}.bin", t)
    return src, train, vals


@pytest.mark.parametrize("in_place", [False, True])
def test_existing_fineweb10b_shards_are_indexed_not_retokenized(fineweb_bins, tmp_path: Path, in_place: bool) -> None:
    src, train, vals = fineweb_bins
    out = src if in_place else tmp_path / "prepared"
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    data = prepare_corpus(DataSpec(kind="shards", name="fineweb10b", source=str(src), path=str(out),
                                   tokenizer="gpt2"), workers=2)
    assert {p.name: p.read_bytes() for p in src.glob("*.bin")} == before  # untouched
    assert data.vocab_size == 50257 and data.eot_id == 50256 and data.meta["tokenizer"]["name"] == "gpt2"
    assert [p.name for p in data.train_paths] == [f"fineweb_train_{i:06d}.bin" for i in (1, 2, 3)]
    assert data.meta["train"]["files"][0] == ("fineweb_train_000001.bin" if in_place else str(src / "fineweb_train_000001.bin"))
    assert (data.n_train_tokens, data.n_val_tokens) == (60_000, 6_000)
    counts = np.bincount(np.concatenate(train), minlength=50257)
    np.testing.assert_array_equal(data.counts(), counts)
    freq = json.loads((out / "frequency.json").read_text())
    head_min, mid_min, sizes, shares = direct_regimes(counts)
    assert (freq["head_min"], freq["mid_min"]) == (head_min, mid_min)
    assert [freq["buckets"][b]["tokens"] for b in ("head", "mid", "tail")] == sizes
    np.testing.assert_allclose([freq["buckets"][b]["share"] for b in ("head", "mid", "tail")], shares)
    assert freq["zero_count_tokens"] == int((counts == 0).sum())
    spec = DataSpec(kind="shards", name="fineweb10b", source=str(src), path=str(out), tokenizer="gpt2")
    assert prepare_dataset(spec, tmp_path / "cache").root == out


def test_existing_shards_without_prepare_still_get_a_frequency_table(fineweb_bins, tmp_path: Path) -> None:
    """Kind "shards" pointed straight at .bin files (no prepare step): counts and frequency in the cache."""
    src, train, _ = fineweb_bins
    data = prepare_dataset(DataSpec(kind="shards", path=str(src), tokenizer="gpt2", vocab_size=50304), tmp_path)
    assert data.counts().size == 50304 and data.eot_id == 50256
    freq = json.loads((data.root / "frequency.json").read_text())
    assert freq["total_tokens"] == 60_000 and freq["head_min"] == direct_regimes(data.counts())[0]


def test_damaged_existing_shard_is_named(fineweb_bins, tmp_path: Path) -> None:
    src, _, _ = fineweb_bins
    victim = src / "fineweb_train_000002.bin"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(DataError, match="fineweb_train_000002.bin"):
        prepare_corpus(DataSpec(kind="shards", source=str(src), path=str(tmp_path / "o"), tokenizer="gpt2"),
                       workers=0)


def test_both_routes_to_existing_shards_split_them_by_one_rule(fineweb_bins, tmp_path: Path) -> None:
    # A .bin that names neither split used to be training data for `sweep.prepare` and invisible to a run.
    src, _, _ = fineweb_bins
    write_shard(src / "fineweb_test_000000.bin", np.arange(5_000))
    with pytest.raises(DataError, match="fineweb_test_000000.bin names neither split"):
        prepare_corpus(DataSpec(kind="shards", source=str(src), path=str(tmp_path / "o"), tokenizer="gpt2"), workers=0)
    with pytest.raises(DataError, match="fineweb_test_000000.bin names neither split"):
        prepare_dataset(DataSpec(kind="shards", path=str(src), tokenizer="gpt2"), tmp_path / "cache")
    assert "fineweb_test_000000.bin names neither split" in " ".join(
        check_data({"kind": "shards", "path": str(src), "source": None}, None))
    cli = subprocess.run([sys.executable, "-m", "specsweep.sweep.prepare", "data=fineweb10b", f"data.source={src}",
                          f"data.path={tmp_path / 'o'}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr[-2000:]
    assert cli.stderr.strip().splitlines() == [f"specsweep.sweep.prepare: error: {src}: shard fineweb_test_000000.bin "
                                               f"names neither split (train or val in the file name)"]


def test_both_routes_to_existing_shards_describe_them_alike(tmp_path: Path) -> None:
    # The vocabulary covers the validation ids too (a run's cache index counted the training ids only,
    # so a validation id above them would index past the model's embedding).
    src = tmp_path / "bins"
    src.mkdir()
    write_shard(src / "x_train_000.bin", np.arange(5_000) % 300)
    write_shard(src / "x_val_000.bin", np.arange(3_000) % 400)
    cached = prepare_dataset(DataSpec(kind="shards", path=str(src)), tmp_path / "cache")
    indexed = prepare_corpus(DataSpec(kind="shards", source=str(src), path=str(tmp_path / "out")), workers=2)
    for data in (cached, indexed):
        assert data.vocab_size == 400 and (data.n_train_tokens, data.n_val_tokens) == (5_000, 3_000)
        np.testing.assert_array_equal(data.counts(), np.bincount(np.arange(5_000) % 300, minlength=400))
        assert data.train_paths == [src / "x_train_000.bin"] and data.val_paths == [src / "x_val_000.bin"]


def test_a_folder_indexed_in_place_can_be_indexed_again_elsewhere(fineweb_bins, tmp_path: Path) -> None:
    # Its meta.json / frequency.json used to count as documents beside the shards ("holds both").
    src, _, _ = fineweb_bins
    here = prepare_corpus(DataSpec(kind="shards", source=str(src), path=str(src), tokenizer="gpt2"), workers=0)
    there = prepare_corpus(DataSpec(kind="shards", source=str(src), path=str(tmp_path / "o"), tokenizer="gpt2"),
                           workers=0)
    assert here.train_paths == there.train_paths and here.counts().tolist() == there.counts().tolist()


# ---------------------------------------------------------------- tokenizers

def test_gpt2_ids_are_known_without_its_vocabulary() -> None:
    tok = load_tokenizer({"name": "gpt2"}, Path("."))
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.save(Path(".")) == {"name": "gpt2", "encoding": "gpt2"}
    with pytest.raises(ValueError, match="uint16"):
        TiktokenTokenizer("cl100k_base")


def test_unavailable_gpt2_vocabulary_is_a_clear_error(tmp_path: Path) -> None:
    reason = _gpt2_unavailable()
    if reason is None:
        pytest.skip("tiktoken's GPT-2 vocabulary is available here; the offline error cannot be shown")
    with pytest.raises(TokenizerUnavailable, match="tiktoken|TIKTOKEN_CACHE_DIR"):
        TiktokenTokenizer().encode("hello")
    if find_spec("datasets") is None:
        return
    (tmp_path / "doc.txt").write_text("hello")
    with pytest.raises(TokenizerUnavailable):
        prepare_corpus(spec_for(tmp_path / "doc.txt", tmp_path / "out", tokenizer="gpt2", val_tokens=1), workers=0)
    assert not list((tmp_path / "out").glob("*.bin"))


@needs_datasets
def test_gpt2_tokenization_matches_tiktoken(mixed_folder, tmp_path: Path) -> None:
    reason = _gpt2_unavailable()
    if reason is not None:
        pytest.skip(reason)
    import tiktoken

    root, docs = mixed_folder
    data = prepare_corpus(spec_for(root, tmp_path / "out", tokenizer="gpt2", val_tokens=3_000, shard_tokens=10_000),
                          workers=2)
    enc = tiktoken.get_encoding("gpt2")
    stream = np.concatenate([np.asarray([enc.eot_token] + enc.encode_ordinary(t)) for t in docs])
    got = np.concatenate([open_shard(p) for p in data.val_paths + data.train_paths])
    np.testing.assert_array_equal(got, stream)
    assert data.vocab_size == 50257 and data.eot_id == 50256


def _fake_gpt2_encoding():
    """A tiktoken Encoding with GPT-2's shape (ids 0..50255 + EOT 50256), built offline."""
    import tiktoken

    ranks = {bytes([i]): i for i in range(256)}
    pairs = ((a, b) for a in range(256) for b in range(256))
    for rank in range(256, 50256):
        ranks[bytes(next(pairs))] = rank
    return tiktoken.Encoding("fake_gpt2", pat_str=r"""'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@needs_datasets
@pytest.mark.skipif(find_spec("tiktoken") is None, reason="the `tiktoken` package is not installed (pip install -e '.[data]')")
def test_gpt2_path_with_an_offline_stand_in_vocabulary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiktoken code path (ordinary encoding, EOT 50256) with a stand-in for the downloaded vocabulary."""
    import tiktoken

    enc = _fake_gpt2_encoding()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc)
    docs = ["Hello world, it's 2024.", "A text that mentions <|endoftext|> is still one document.", "ünïcödé ✓"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    data = prepare_corpus(spec_for(tmp_path / "docs.jsonl", tmp_path / "out", tokenizer="gpt2", val_tokens=10,
                                   shard_tokens=1000), workers=0)
    stream = np.concatenate([open_shard(p) for p in data.val_paths + data.train_paths])
    np.testing.assert_array_equal(stream, np.concatenate([[50256] + enc.encode_ordinary(t) for t in docs]))
    assert (stream == 50256).sum() == 3  # the EOT inside a document's text is text, not a separator
    assert (data.vocab_size, data.eot_id, data.meta["tokenizer"]) == (50257, 50256, {"name": "gpt2", "encoding": "gpt2"})
    assert data.tokenizer().decode(stream[:7]).startswith("<|endoftext|>Hello")


# ---------------------------------------------------------------- training on prepared shards

def test_trainer_names_the_prepare_command_when_the_folder_is_missing(compose, tmp_path: Path) -> None:
    from specsweep.sweep.grid.spec import ConfigError, build_run_spec

    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"specsweep-prepare data=fineweb_edu data.path={missing}"):
        build_run_spec(compose(["data=fineweb_edu", f"data.path={missing}"]))
    with pytest.raises(DataError, match="specsweep-prepare data=fineweb10b"):
        prepare_dataset(DataSpec(kind="shards", name="fineweb10b", source="hf:HuggingFaceFW/fineweb",
                                 path=str(missing)), tmp_path / "cache")
    missing.mkdir()  # exists, but nothing was prepared there
    with pytest.raises(DataError, match="not a prepared data folder.*specsweep-prepare"):
        prepare_dataset(DataSpec(kind="shards", name="fineweb10b", source="hf:HuggingFaceFW/fineweb",
                                 path=str(missing)), tmp_path / "cache")


@needs_datasets
@pytest.mark.slow
def test_trainer_runs_on_prepared_shards(mixed_folder, tmp_path: Path, env: dict) -> None:
    root, _ = mixed_folder
    out = tmp_path / "prepared"
    prepare_corpus(spec_for(root, out, val_tokens=20_000, shard_tokens=40_000), workers=0)
    data_args = ["data=local", f"data.source={root}", f"data.path={out}", "data.tokenizer=byte"]
    run_train([*data_args, "+preset=smoke", "logger=none", "train.steps=10", "train.eval_every=5",
                      "train.ckpt_every=5", "telemetry.every=5"], env)
    run_dir = next((tmp_path / "runs" / "default").iterdir())
    done = json.loads((run_dir / "DONE").read_text())
    assert done["final_step"] == 10 and np.isfinite(done["final_eval_loss"])
    buckets = {json.loads(line)["bucket"] for line in (run_dir / "spectra.jsonl").read_text().splitlines()}
    assert {"head", "mid", "tail"} <= buckets  # HEAD/MID/TAIL from the prepared counts
    # A config naming another corpus is refused instead of silently training on this folder.
    with pytest.raises(ValueError, match="prepared from other data.*a.txt"):
        prepare_dataset(spec_for(root / "a.txt", out), tmp_path / "cache")
