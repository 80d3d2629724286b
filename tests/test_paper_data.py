"""The paper's data as a first-class source (issue 20 item 4, paper-notes §4b): kjj0/fineweb10B-gpt2's
llm.c-format shards, prepared from a local folder or from the hub (huggingface_hub replaced here by
a stand-in that copies local files: this machine has no internet), indexed as they are with the
frequency table computed from them, and a planned vocabulary that is the one training uses (50,304).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from specsweep.sweep.data.cache import prepare_dataset
from specsweep.sweep.data.loader import TokenBatches
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.data.streaming import prepare_corpus
from specsweep.sweep.errors import DataError
from specsweep.sweep.grid.estimate import planned_vocab
from specsweep.sweep.grid.spec import build_run_spec


def write_llmc(path: Path, tokens: np.ndarray) -> None:
    """An llm.c token shard: 256 int32 header (magic 20240520, version 1, token count), uint16 tokens."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(tokens))
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


@pytest.fixture
def kjj0(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """A miniature of the repository: the val shard first, then training shards (the last shorter)."""
    src = tmp_path / "kjj0"
    src.mkdir()
    rng = np.random.default_rng(1)
    write_llmc(src / "fineweb_val_000000.bin", rng.zipf(1.3, size=4_000) % 50257)
    train = [rng.zipf(1.2, size=n) % 50257 for n in (12_000, 12_000, 5_537)]
    train[0][:3] = (50256, 50300, 50303)  # ids of the padded rows fit the 50,304 counts
    for i, t in enumerate(train):
        write_llmc(src / f"fineweb_train_{i + 1:06d}.bin", t)
    return src, train


def _spec(compose, *overrides: str) -> DataSpec:
    cfg = compose(["data=fineweb10b_gpt2", *overrides])
    return DataSpec.from_mapping(OmegaConf.to_container(cfg.data, resolve=True))


def _check_prepared(data, train: list[np.ndarray]) -> None:
    assert data.vocab_size == 50304 and data.meta["tokenizer"]["name"] == "gpt2"
    assert [p.name for p in data.train_paths] == [f"fineweb_train_{i:06d}.bin" for i in (1, 2, 3)]
    assert [p.name for p in data.val_paths] == ["fineweb_val_000000.bin"]
    assert data.n_train_tokens == sum(map(len, train))
    np.testing.assert_array_equal(data.counts(), np.bincount(np.concatenate(train), minlength=50304))
    assert (data.root / "frequency.json").is_file()


def test_a_local_folder_of_the_papers_shards_is_indexed_with_its_frequency_table(kjj0, compose, tmp_path) -> None:
    src, train = kjj0
    spec = _spec(compose, f"data.source={src}", f"data.path={tmp_path / 'prepared'}")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    data = prepare_corpus(spec, workers=1)
    _check_prepared(data, train)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # read as they are
    assert prepare_dataset(spec, tmp_path / "cache").root == data.root  # what a run then finds
    x, _ = TokenBatches(data.train_paths, 2, 16, seed=0, order="sequential", stream=(2, 1)).get(0)
    assert x[0, :3].tolist() == [50256, 50300, 50303]


@pytest.fixture
def hub(kjj0, monkeypatch) -> list[dict]:
    """huggingface_hub's snapshot_download replaced by a copy from the kjj0 folder; the calls made."""
    src, _ = kjj0
    calls = []

    def snapshot_download(**kwargs):  # huggingface_hub's, offline: the repository is the local folder
        calls.append(kwargs)
        for f in src.glob(kwargs["allow_patterns"][0]):
            shutil.copy(f, Path(kwargs["local_dir"]) / f.name)
        return kwargs["local_dir"]

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_the_hub_route_downloads_the_bin_files_then_indexes_them(kjj0, hub, compose, tmp_path) -> None:
    _, train = kjj0
    calls = hub
    out = tmp_path / "prepared"
    spec = _spec(compose, f"data.path={out}")
    assert spec.source == "hf-bins:kjj0/fineweb10B-gpt2"
    data = prepare_corpus(spec, workers=1)
    assert [(c["repo_id"], c["repo_type"], c["allow_patterns"]) for c in calls] == \
        [("kjj0/fineweb10B-gpt2", "dataset", ["*.bin"])]
    _check_prepared(data, train)
    assert data.meta["source"]["source"] == "hf-bins:kjj0/fineweb10B-gpt2"
    assert prepare_dataset(spec, tmp_path / "cache").root == out  # the run's data check accepts the folder
    assert prepare_corpus(spec, workers=1).root == out  # prepared again: the same folder, accepted


def test_a_prepared_hub_folder_is_not_downloaded_again(kjj0, hub, compose, tmp_path) -> None:
    _, train = kjj0
    spec = _spec(compose, f"data.path={tmp_path / 'prepared'}")
    first = prepare_corpus(spec, workers=1)
    assert len(hub) == 1
    again = prepare_corpus(spec, workers=1)
    assert len(hub) == 1  # the finished folder is returned as it is, the hub not asked again
    assert again.root == first.root and again.meta == first.meta
    _check_prepared(again, train)
    other = _spec(compose, f"data.path={tmp_path / 'prepared'}", "data.source=hf-bins:kjj0/other")
    with pytest.raises(DataError, match="already holds a prepared corpus with other settings"):
        prepare_corpus(other, workers=1)  # another repository into the same folder: refused, not downloaded
    assert len(hub) == 1


def test_an_unreachable_hub_or_a_bad_repository_is_a_short_data_error(compose, tmp_path, monkeypatch) -> None:
    import huggingface_hub

    def offline(**kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DataError, match="needs internet access"):
        prepare_corpus(_spec(compose, f"data.path={tmp_path / 'p'}"), workers=1)
    with pytest.raises(DataError, match="expected hf-bins:<owner>/<dataset>"):
        prepare_corpus(_spec(compose, f"data.path={tmp_path / 'p'}", "data.source=hf-bins:kjj0"), workers=1)


def test_plan_reports_the_vocabulary_training_uses(kjj0, compose, tmp_path) -> None:
    src, _ = kjj0
    # the model takes the data's vocabulary (model.vocab_size null): the counts' 50,304, not GPT-2's 50,257
    hub = build_run_spec(compose(["data=fineweb10b_gpt2"]), check_files=False)
    assert hub.vocab_from_data and planned_vocab(hub) == 50304
    local = build_run_spec(compose(["data=fineweb10b", f"data.source={src}", "data.vocab_size=50304"]),
                           check_files=False)
    assert planned_vocab(local) == 50304
    # a prepared folder says what it holds
    out = tmp_path / "prepared"
    prepare_corpus(_spec(compose, f"data.source={src}", f"data.path={out}"), workers=1)
    done = build_run_spec(compose(["data=fineweb10b", f"data.path={out}", "data.source=null"]), check_files=False)
    assert planned_vocab(done) == 50304
    # the paper preset: 50,304 rows in the model itself
    paper = build_run_spec(compose(["+preset=paper"]), check_files=False)
    assert (paper.vocab_from_data, planned_vocab(paper), paper.data.name) == (False, 50304, "fineweb10b_gpt2")
