"""Token data: shard files, the built-in synthetic corpus, local text, preparation and batches."""

from sweep.data.loader import TokenBatches
from sweep.data.prepare import DataSpec, PreparedData, prepare_dataset
from sweep.data.shards import ShardError, open_shard, read_header, write_shard
from sweep.data.synthetic import SyntheticConfig, generate_tokens
from sweep.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer, train_bpe

__all__ = [
    "BPETokenizer", "ByteTokenizer", "DataSpec", "PreparedData", "ShardError", "SyntheticConfig",
    "TokenBatches", "Tokenizer", "generate_tokens", "load_tokenizer", "open_shard", "prepare_dataset",
    "read_header", "train_bpe", "write_shard",
]
