"""Token data: what a run reads, how it is prepared, and the batches the training loop draws.

Modules (names are imported lazily, so that preparation-only processes do not import torch):

    spec          DataSpec, the data.* config section
    checks        data inputs checked before any run directory exists (used by the grid's preflight)
    cache         prepare_dataset: a run's prepared folder (synthetic, local text, existing shards), built once
    streaming     prepare_corpus: `specsweep-prepare` for hub / local corpora (resumable)
    documents     the one route from local text (and hub rows) to tokens: finding, reading, EOT-delimited
                  encoding (both cache and streaming use it), and a source's documents in resumable order
    shard_index   the one indexer of existing .bin shards (both routes use it)
    hub_bins      existing .bin shards downloaded from a hub dataset repository (hf-bins:, the paper's kjj0)
    prepared      the prepared folder's files and PreparedData to read it
    shards        the .bin shard file format
    tokenizer     GPT-2 (tiktoken), local BPE (one training rule for both routes), bytes
    synthetic     the built-in Zipf-Markov corpus
    frequency     HEAD/MID/TAIL table of a folder's unigram counts
    order         where batches lie in the shards (random windows, the paper's sequential stream and its
                  per-rank shard ends)
    loader        TokenBatches: stateless batches as tensors
    run_data      load_run_data: from a run spec to its batch sources

Layering: imports only sweep.errors (floor 0), metrics/ and third-party packages; never sweep.grid
or sweep.run (which import it). Every data problem a user causes raises sweep.errors.DataError,
whose message names the file.
"""

from importlib import import_module
from typing import Any

_HOME = {
    "DataSpec": "spec", "prepare_command": "spec",
    "PreparedData": "prepared", "prepare_dataset": "cache", "prepare_corpus": "streaming",
    "TokenBatches": "loader", "RunData": "run_data", "load_run_data": "run_data",
    "open_shard": "shards", "read_header": "shards", "write_shard": "shards",
    "SyntheticConfig": "synthetic", "generate_tokens": "synthetic",
    "Tokenizer": "tokenizer", "ByteTokenizer": "tokenizer", "BPETokenizer": "tokenizer",
    "load_tokenizer": "tokenizer", "train_bpe": "tokenizer",
    "TiktokenTokenizer": "tokenizer", "TokenizerUnavailable": "tokenizer",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'specsweep.sweep.data' has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)
