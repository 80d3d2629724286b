"""Prepare token data ahead of training: ``specsweep-prepare data=<config> [data.* overrides]``
(= ``specsweep-prepare``; ``--help`` shows examples: conf/hydra/help/specsweep_prepare.yaml).

    specsweep-prepare data=fineweb_edu                       # FineWeb-Edu sample-10BT, GPT-2 tokens
    specsweep-prepare data=fineweb_edu data.path=/shared/fwe workers=32
    specsweep-prepare data=fineweb_edu data.source=/corpus data.tokenizer=bpe data.path=/shared/mine
    specsweep-prepare data=fineweb10b data.source=/shared/fineweb10B   # existing .bin shards: index only
    specsweep-prepare data=text data.path=corpus.txt         # the trainer's cached folder, built now

One path per data kind: kind "shards" configs (fineweb_edu, fineweb10b, local) are streamed from
``data.source`` into the folder ``data.path`` that training then reads (sweep.data.streaming; a
source of existing .bin shards is indexed, sweep.data.shard_index); an interrupted preparation
continues where it stopped when the same command is run again. Synthetic data and local text are
prepared into the trainer's cache (``paths.data_root``) exactly as a training job would
(sweep.data.cache). Downloads happen here only.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from specsweep.sweep.commands import CONF_DIR
from specsweep.sweep.credentials import exit_if_credentials_in
from specsweep.sweep.data.cache import prepare_dataset
from specsweep.sweep.data.frequency import FREQUENCY_FILE, format_frequency
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.data.streaming import prepare_corpus
from specsweep.sweep.errors import DataError

log = logging.getLogger("specsweep.prepare")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prepare")
def main(cfg: DictConfig) -> Any:
    try:
        spec = DataSpec.from_mapping(OmegaConf.to_container(cfg.data, resolve=True))
        if spec.kind == "shards":
            data = prepare_corpus(spec, workers=cfg.workers, docs_per_task=int(cfg.docs_per_task))
        else:
            data = prepare_dataset(spec, cfg.paths.data_root)
            freq = data.root / FREQUENCY_FILE
            if freq.is_file():
                log.info("prepared %s: %d train / %d val tokens\n%s", data.root, data.n_train_tokens,
                         data.n_val_tokens, format_frequency(json.loads(freq.read_text())))
    except (DataError, OSError) as e:  # every data problem a user causes is a DataError naming the file
        print(f"specsweep.sweep.prepare: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(data.root)
    return str(data.root)


def cli() -> None:
    """The ``specsweep-prepare`` console script (and ``python -m specsweep.sweep.prepare``)."""
    exit_if_credentials_in(sys.argv[1:])  # before Hydra echoes the arguments
    main()


if __name__ == "__main__":
    cli()
