"""W&B run ids and key names, shared by the training-time logger and the analysis.

Key scheme (x-axis ``trainer/step`` for every key; W&B makes one workspace section per prefix
before the last ``/``):

- ``train/{loss,lr,tokens_per_s,grad_norm}``, ``eval/{loss,ppl}``, ``trainer/{step,tokens,elapsed_s}``
  (the ``metrics.jsonl`` columns ``train_loss``, ``eval_loss``, ... without the repeated prefix;
  runs logged before that used ``train/train_loss``, still read by :func:`column_of_key`)
- ``telemetry/<field>``: the cost of one telemetry event (metrics.jsonl ``telemetry_<field>``:
  critical_s, decompose_s, wait_s, host_mib, device_mib, spectrum, matrices, ...); in the summary,
  the whole run's ``telemetry/share`` of wall time and its event counts
- ``spectral_median/<site>/<bucket>/<metric>``: median over layers of one telemetry event
- ``tables/spectral_layers``: one W&B Table per event with the per-layer values
  (columns :data:`LAYER_TABLE_COLUMNS` + the metrics)
- ``spectral/<site>/<bucket>/<metric>/L<layer>``: one scalar per layer and metric, only with
  ``logger.per_layer_keys=true`` (~1,800 keys per run at 24 layers: a slow workspace)

Metric names never contain ``.`` in W&B (it means nesting there): ``renyi_0.5`` becomes
``renyi_0p5``; :func:`metric_from_wandb` undoes it.

Floor 0 of ``sweep``: imports only the standard library; anything in ``sweep`` may import it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping, Optional


def stable_wandb_id(sweep_name: str, run_id: str) -> str:
    """A W&B run id that is the same for every attempt of the same run (requeues, relaunches)."""
    return hashlib.sha1(f"{sweep_name}/{run_id}".encode()).hexdigest()[:16]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def metric_to_wandb(metric: str) -> str:
    return metric.replace(".", "p")


def metric_from_wandb(name: str) -> str:
    """Inverse of :func:`metric_to_wandb` for the telemetry metric names (``renyi_0p5``)."""
    m = re.fullmatch(r"renyi_(\d+)p(\d+)", name)
    return f"renyi_{m.group(1)}.{m.group(2)}" if m else name


def record_key(record: Mapping[str, Any], metric: str) -> str:
    """W&B key of one telemetry metric, e.g. ``spectral/post/tail/hard_rank/L03``."""
    return f"spectral/{record['site']}/{record['bucket']}/{metric_to_wandb(metric)}/L{int(record['layer']):02d}"


def median_key(site: str, bucket: str, metric: str) -> str:
    return f"spectral_median/{site}/{bucket}/{metric_to_wandb(metric)}"


LAYER_TABLE_KEY = "tables/spectral_layers"
LAYER_TABLE_COLUMNS = ("step", "layer", "site", "bucket")  # then one column per metric (W&B names)
_TRAINER_COLUMNS = ("step", "tokens", "elapsed_s")


def train_key(name: str) -> str:
    """W&B key of a metrics.jsonl column: ``train_loss`` -> ``train/loss``, ``eval_ppl`` ->
    ``eval/ppl``, ``lr`` -> ``train/lr``, ``step`` -> ``trainer/step``, a telemetry cost column
    ``telemetry_wait_s`` -> ``telemetry/wait_s``."""
    if name in _TRAINER_COLUMNS:
        return f"trainer/{name}"
    if name.startswith("telemetry_"):
        return f"telemetry/{name[10:]}"
    if name.startswith("eval_"):
        return f"eval/{name[5:]}"
    if name.startswith("train_"):
        return f"train/{name[6:]}"
    return f"train/{name}"


def column_of_key(key: str) -> Optional[str]:
    """The metrics.jsonl column of a train/eval/trainer W&B key, or None. Keys of older runs
    read back too: ``train/train_loss`` (before the rename) is ``train_loss`` like ``train/loss``."""
    prefix, _, name = key.partition("/")
    if not name or "/" in name:
        return None
    if prefix == "trainer" and name in _TRAINER_COLUMNS:
        return name
    if prefix == "eval":
        return f"eval_{name}"
    if prefix == "telemetry":
        return f"telemetry_{name}"
    if prefix == "train":
        return "train_loss" if name == "loss" else name
    return None
