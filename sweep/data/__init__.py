"""Token data: shard files, the built-in synthetic corpus, local text, real corpora, preparation, batches.

Names are imported lazily so that preparation-only processes do not pay for importing torch.
"""

from importlib import import_module
from typing import Any

_HOME = {
    "TokenBatches": "loader",
    "DataSpec": "prepare", "PreparedData": "prepare", "prepare_dataset": "prepare",
    "ShardError": "shards", "open_shard": "shards", "read_header": "shards", "write_shard": "shards",
    "SyntheticConfig": "synthetic", "generate_tokens": "synthetic",
    "Tokenizer": "tokenizer", "ByteTokenizer": "tokenizer", "BPETokenizer": "tokenizer",
    "load_tokenizer": "tokenizer", "train_bpe": "tokenizer",
    "TiktokenTokenizer": "tokenizer", "TokenizerUnavailable": "tokenizer",
    "prepare_corpus": "corpus", "PrepareError": "corpus", "write_frequency": "frequency",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'sweep.data' has no attribute {name!r}")
    return getattr(import_module(f"sweep.data.{_HOME[name]}"), name)
