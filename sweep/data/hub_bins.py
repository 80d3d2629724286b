"""Pre-tokenized ``.bin`` shards from a Hugging Face dataset repository (``data.source=hf-bins:<repo>``).

The paper trained on ``kjj0/fineweb10B-gpt2``: modded-nanogpt's FineWeb 10B sample as llm.c token
shards (sweep.data.shards), one validation shard and 103 training shards. ``specsweep-prepare``
downloads the repository's ``.bin`` files into ``data.path`` with ``huggingface_hub`` (internet
needed; a download cut short resumes; a folder already prepared is not downloaded again) and indexes
them there (sweep.data.shard_index): nothing is re-tokenized, and the frequency table is computed
from the training shards themselves.
"""

from __future__ import annotations

from pathlib import Path

from specsweep.sweep.errors import DataError

PREFIX = "hf-bins:"


def is_hub_bins(source: str | None) -> bool:
    return bool(source) and str(source).startswith(PREFIX)


def hub_repo(source: str) -> tuple[str, str | None]:
    """(repository, revision or None) of ``hf-bins:<owner>/<name>[@<revision>]``."""
    repo, _, revision = source[len(PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise DataError(f"data.source {source!r}: expected {PREFIX}<owner>/<dataset>[@<revision>]")
    return repo, revision or None


def download_bins(source: str, out: Path) -> list[Path]:
    """Download the ``.bin`` files of the dataset repository named by ``source`` into ``out``;
    return them (name order). A DataError when the hub cannot be reached or holds no shards."""
    repo, revision = hub_repo(source)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # the [data] extra
        raise DataError(f"{source}: needs huggingface_hub (pip install -e '.[data]')") from e
    out.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, allow_patterns=["*.bin"],
                          local_dir=str(out))
    except Exception as e:  # offline, unknown repository, hub errors
        raise DataError(f"cannot download {source} from the Hugging Face hub: {type(e).__name__}: {str(e)[:300]} "
                        f"-- the prepare step needs internet access (or point data.source at a folder of "
                        f"the .bin files)") from e
    files = local_bins(out)
    if not files:
        raise DataError(f"{source}: the repository holds no .bin shards")
    return files


def local_bins(out: Path) -> list[Path]:
    """The ``.bin`` files already downloaded into ``out`` (name order; none: an empty list)."""
    return sorted(p for p in out.rglob("*.bin") if not p.name.startswith("."))
