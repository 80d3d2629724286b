"""Corpus preparation speed (tokens/s) with 1 and 2 tokenizing worker processes.

Builds a local .jsonl corpus from tinyshakespeare (one paragraph per document, the text repeated
to reach the asked size), then runs ``sweep.data.streaming.prepare_corpus`` on it -- `datasets`
streaming, tokenization in a process pool, shard writing -- once per worker count, alternating
over repeats so that machine noise hits both alike. tokens/s counts the streaming phase
(pool start-up, reading, tokenizing, writing shards), not the one-off BPE training nor the final
frequency table. Both outputs are checked to be byte-identical.

    python benchmarks/prepare.py                      # BPE (trained locally), ~1 minute on 2 idle cores
    python benchmarks/prepare.py --tokenizer gpt2     # needs tiktoken's vocabulary (internet or cache)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def build_corpus(folder: Path, megabytes: float) -> tuple[Path, int]:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    path, size, n = folder / "corpus.jsonl", 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < megabytes * 1e6:
            for p in paragraphs:
                f.write(json.dumps({"text": p}) + "\n")
                size += len(p)
                n += 1
    return path, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--megabytes", type=float, default=8.0, help="corpus size in characters (millions)")
    ap.add_argument("--tokenizer", default="bpe", choices=["bpe", "gpt2", "byte"])
    ap.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (comma-separated)")
    args = ap.parse_args()

    import datasets  # noqa: F401  (imported once here, not inside the first timed run)
    import torch  # noqa: F401  (datasets imports it lazily on first use)

    from specsweep.sweep.data.streaming import prepare_corpus
    from specsweep.sweep.data.spec import DataSpec

    counts = [int(w) for w in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        source, n_docs = build_corpus(tmp, args.megabytes)
        print(f"corpus: {n_docs:,} documents, {source.stat().st_size / 1e6:.1f} MB (.jsonl), tokenizer "
              f"{args.tokenizer}; {os.cpu_count()} CPUs visible")
        rates: dict[int, list[float]] = {w: [] for w in counts}
        outputs: dict[int, bytes] = {}
        for rep in range(args.repeats):
            for w in counts:
                out = tmp / f"out_w{w}"
                shutil.rmtree(out, ignore_errors=True)
                spec = DataSpec(kind="shards", source=str(source), path=str(out), tokenizer=args.tokenizer,
                                vocab_size=args.vocab_size, val_tokens=100_000, shard_tokens=1_000_000)
                data = prepare_corpus(spec, workers=w)
                t = data.meta["timing"]
                rates[w].append(t["streamed_tokens"] / t["stream_s"])
                print(f"  repeat {rep} workers={w}: {t['streamed_tokens']:,} tokens in {t['stream_s']:.2f} s "
                      f"({rates[w][-1]:,.0f} tokens/s; BPE training {t['tokenizer_s']:.1f} s)")
                outputs[w] = b"".join(p.read_bytes() for p in data.val_paths + data.train_paths)
        assert len(set(outputs.values())) == 1, "outputs differ between worker counts"
        print("\nworkers   tokens/s (median)")
        for w in counts:
            print(f"{w:>7}   {statistics.median(rates[w]):>12,.0f}")
        if len(counts) == 2:
            a, b = (statistics.median(rates[w]) for w in counts)
            print(f"ratio {counts[1]} / {counts[0]} workers: {b / a:.2f}x (identical output bytes)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
