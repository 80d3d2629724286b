"""Tokenizers behind one small interface: tiktoken's GPT-2 encoding, a BPE trained locally, bytes.

``make_tokenizer`` is where every preparation gets its tokenizer by name (data=text and data=local
train their BPE there, by one rule). A prepared data folder records its tokenizer as
``{"name": ..., **details}`` in meta.json; ``load_tokenizer`` turns that entry back into a
tokenizer. New kinds (e.g. tiktoken's GPT-2 encoding) register a loader in ``TOKENIZER_LOADERS``
and need no change elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from specsweep.sweep.data.shards import check_vocab_fits
from specsweep.sweep.errors import DataError

EOT_TEXT = "<|endoftext|>"
BPE_FILE = "tokenizer.json"
BPE_TRAIN_CHARS = 50_000_000  # a local BPE is trained on the first documents, up to this many characters


class Tokenizer(ABC):
    """Text <-> token ids. ``encode`` never adds EOT; document separation is the caller's job."""

    name: str

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eot_id(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Inverse of encode; EOT ids decode to ``EOT_TEXT``."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def save(self, folder: Path) -> dict:
        """Write whatever files the tokenizer needs into ``folder``; return its meta.json entry."""
        return {"name": self.name}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, EOT = 256 (vocab 257)."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eot_id(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        pieces, start = [], 0
        for cut in np.flatnonzero(ids == self.eot_id):
            pieces += [bytes(ids[start:cut].astype(np.uint8)), EOT_TEXT.encode()]
            start = cut + 1
        pieces.append(bytes(ids[start:].astype(np.uint8)))
        return b"".join(pieces).decode("utf-8", errors="replace")


class BPETokenizer(Tokenizer):
    """A byte-level BPE (GPT-2 style pre-tokenization, exact round trip) from the ``tokenizers`` package."""

    name = "bpe"

    def __init__(self, tok) -> None:
        self._tok = tok
        eot = tok.token_to_id(EOT_TEXT)
        if eot is None:
            raise DataError(f"BPE tokenizer has no {EOT_TEXT} token")
        self._eot = int(eot)
        check_vocab_fits(self.vocab_size)

    @classmethod
    def from_file(cls, path: Path) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        if not Path(path).is_file():
            raise DataError(f"BPE tokenizer file not found: {path}")
        return cls(HFTokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    @property
    def eot_id(self) -> int:
        return self._eot

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, folder: Path) -> dict:
        self._tok.save(str(Path(folder) / BPE_FILE))
        return {"name": self.name, "file": BPE_FILE}


def _first_chars(texts: Iterable[str], limit: int) -> Iterator[str]:
    for text in texts:
        if limit <= 0:
            return
        yield text[:limit]
        limit -= len(text)


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE with ``vocab_size`` entries (EOT included) on the first
    ``BPE_TRAIN_CHARS`` characters of ``texts``.

    The vocabulary can come out smaller than asked when the text has too few distinct merges.
    """
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if not isinstance(vocab_size, int) or vocab_size < len(alphabet) + 1:
        raise DataError(f"BPE vocab_size must be an integer >= {len(alphabet) + 1} (bytes + EOT), got {vocab_size!r}")
    check_vocab_fits(vocab_size)
    tok = HFTokenizer(models.BPE())
    # No prefix space and a ByteLevel decoder: decode(encode(text)) == text for any text.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(_first_chars(texts, BPE_TRAIN_CHARS), trainer)
    return BPETokenizer(tok)


class TokenizerUnavailable(DataError):
    """A tokenizer whose vocabulary cannot be loaded here (e.g. no internet for tiktoken's download).

    The one DataError with a name of its own: callers (and tests) tell "not here" from "bad data".
    """


class TiktokenTokenizer(Tokenizer):
    """tiktoken's GPT-2 encoding (the paper's tokenizer): 50,257 ids, EOT = 50256.

    The vocabulary is loaded on first use, not at construction, so a training job (which only needs
    ``vocab_size`` and ``eot_id``) never downloads it. tiktoken fetches it once from the internet
    and caches it (``TIKTOKEN_CACHE_DIR``); where that is impossible ``load()`` raises
    TokenizerUnavailable with what to do instead.
    """

    name = "gpt2"
    _SIZES = {"gpt2": (50257, 50256)}  # encoding -> (vocab_size, eot id), known without the vocabulary

    def __init__(self, encoding: str = "gpt2") -> None:
        if encoding not in self._SIZES:
            raise DataError(f"unsupported tiktoken encoding {encoding!r} (supported: {', '.join(self._SIZES)}; "
                             f"larger vocabularies do not fit uint16 shards)")
        self.encoding = encoding
        self._enc = None

    def load(self) -> "TiktokenTokenizer":
        """Load the vocabulary now (downloading it if tiktoken has no cached copy)."""
        if self._enc is None:
            try:
                import tiktoken
            except ImportError as e:
                raise TokenizerUnavailable(
                    "the gpt2 tokenizer needs the `tiktoken` package: pip install -e '.[data]'") from e
            try:
                enc = tiktoken.get_encoding(self.encoding)
            except Exception as e:  # requests/urllib errors, blocked hosts, corrupt cache, ...
                raise TokenizerUnavailable(
                    f"tiktoken could not load the {self.encoding!r} vocabulary ({type(e).__name__}: {str(e)[:160]}). "
                    f"It is downloaded once from openaipublic.blob.core.windows.net: run the prepare step "
                    f"on a machine with internet access, or copy a tiktoken cache there and set "
                    f"TIKTOKEN_CACHE_DIR; use tokenizer=bpe or tokenizer=byte to tokenize offline") from None
            vocab, eot = self._SIZES[self.encoding]
            if enc.n_vocab != vocab or enc.eot_token != eot:
                raise TokenizerUnavailable(f"tiktoken {self.encoding!r} has {enc.n_vocab} ids / EOT "
                                           f"{enc.eot_token}, expected {vocab} / {eot}")
            self._enc = enc
        return self

    @property
    def vocab_size(self) -> int:
        return self._SIZES[self.encoding][0]

    @property
    def eot_id(self) -> int:
        return self._SIZES[self.encoding][1]

    def encode(self, text: str) -> list[int]:
        # "ordinary": an "<|endoftext|>" inside a document is text, never a document separator.
        return self.load()._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.load()._enc
        return [enc.encode_ordinary(t) for t in texts]  # one thread: parallelism is across processes

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.load()._enc.decode([int(i) for i in ids])

    def save(self, folder: Path) -> dict:
        return {"name": self.name, "encoding": self.encoding}


def make_tokenizer(name: str, vocab_size: Optional[int], texts: Callable[[], Iterable[str]],
                   names: Sequence[str] = ("gpt2", "bpe", "byte")) -> Tokenizer:
    """The tokenizer a preparation encodes with: one of ``names``; "bpe" is trained here on
    ``texts()`` (``vocab_size`` entries), "gpt2" has its vocabulary loaded now (it fails here,
    clearly, when the vocabulary is unavailable)."""
    if name not in names:
        raise DataError(f"data.tokenizer must be {' | '.join(names)}, got {name!r}")
    if name == "gpt2":
        return TiktokenTokenizer().load()
    return train_bpe(texts(), vocab_size) if name == "bpe" else ByteTokenizer()


TOKENIZER_LOADERS: dict[str, Callable[[dict, Path], Tokenizer]] = {
    "byte": lambda info, folder: ByteTokenizer(),
    "bpe": lambda info, folder: BPETokenizer.from_file(Path(folder) / info.get("file", BPE_FILE)),
    "gpt2": lambda info, folder: TiktokenTokenizer(info.get("encoding", "gpt2")),
}


def load_tokenizer(info: dict, folder: Path) -> Tokenizer:
    """Rebuild the tokenizer described by a meta.json ``tokenizer`` entry of the data ``folder``."""
    name = info.get("name")
    if name not in TOKENIZER_LOADERS:
        raise DataError(f"unknown tokenizer {name!r} (known: {', '.join(sorted(TOKENIZER_LOADERS))})")
    return TOKENIZER_LOADERS[name](info, Path(folder))
