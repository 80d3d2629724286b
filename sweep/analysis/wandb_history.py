"""W&B history rows of a training run -> its ``metrics.jsonl`` rows and ``spectra.jsonl`` records.

Reads every key name a run may have been logged with (``sweep.wandb_keys``): train/eval rows under
today's names (``train/loss``) and the older ones (``train/train_loss``); the per-layer telemetry
values from the per-layer scalar keys ``spectral/<site>/<bucket>/<metric>/L<layer>`` when the run
has them (``logger.per_layer_keys``), else from the layer Table logged at each telemetry event
(``tables/spectral_layers``, whose contents :func:`resolve_layer_tables` puts into the history row).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from specsweep.sweep.wandb_keys import LAYER_TABLE_COLUMNS, LAYER_TABLE_KEY, column_of_key, metric_from_wandb

SPECTRAL_KEY = re.compile(r"^spectral/([a-z]+)/([a-z]+)/([A-Za-z0-9_]+)/L(\d+)$")
# metrics.jsonl columns of a train row and of an eval row
TRAIN_COLUMNS = ("train_loss", "lr", "tokens", "tokens_per_s", "grad_norm", "elapsed_s")
EVAL_COLUMNS = ("eval_loss", "eval_ppl", "tokens")

FileReader = Callable[[str], Optional[str]]  # a run file's path -> its text (None: not there)


def num(v: Any) -> Optional[float]:
    """A number as float; None for anything else (booleans, strings, None)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


# ---- layer Tables -------------------------------------------------------------------------------

def _table_path(row: Mapping[str, Any]) -> Optional[str]:
    """The run-file path of the layer Table logged in a history row: the API gives the Table's
    reference as a nested dict, ``wandb leet inspect`` as dotted keys."""
    ref = row.get(LAYER_TABLE_KEY)
    path = ref.get("path") if isinstance(ref, Mapping) else row.get(f"{LAYER_TABLE_KEY}.path")
    return path if isinstance(path, str) and path else None


def has_layer_scalars(history: Iterable[Mapping[str, Any]]) -> bool:
    return any(SPECTRAL_KEY.match(k) for row in history for k in row)


def resolve_layer_tables(history: list[dict], read: FileReader) -> int:
    """Put the contents (``{"columns", "data"}``) of each logged layer Table into its history row
    under ``tables/spectral_layers``. Skipped when the run has per-layer scalar keys (the same
    values, no file to fetch). Returns how many Tables were read."""
    if has_layer_scalars(history):
        return 0
    n = 0
    for row in history:
        path = _table_path(row)
        text = read(path) if path else None
        if text is None:
            continue
        try:
            table = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(table, dict) and isinstance(table.get("columns"), list) and isinstance(table.get("data"), list):
            row[LAYER_TABLE_KEY] = {"columns": table["columns"], "data": table["data"]}
            n += 1
    return n


def folder_file_reader(run_folder: Path) -> FileReader:
    """Files of a local W&B run folder (``<folder>/files/<path>``), never outside it."""
    files = (run_folder / "files").resolve()

    def read(path: str) -> Optional[str]:
        f = (files / path).resolve()
        return f.read_text() if f.is_relative_to(files) and f.is_file() else None

    return read


def api_file_reader(run: Any, tmp: Path) -> FileReader:
    """Files of a run on the W&B server (public API), downloaded into ``tmp``."""
    def read(path: str) -> Optional[str]:
        try:
            with run.file(path).download(root=str(tmp), replace=True) as fh:
                return fh.read()
        except Exception:  # noqa: BLE001 - a file the server lacks: that event's layers are missing
            return None

    return read


def table_records(table: Mapping[str, Any]) -> Iterator[dict]:
    """Telemetry records (status ok) from one layer Table's columns and rows."""
    columns = [str(c) for c in table.get("columns") or ()]
    if not set(LAYER_TABLE_COLUMNS) <= set(columns):
        return
    for values in table.get("data") or ():
        cells = dict(zip(columns, values))
        if num(cells.get("step")) is None or num(cells.get("layer")) is None:
            continue
        rec = {"step": int(cells["step"]), "layer": int(cells["layer"]), "site": str(cells["site"]),
               "bucket": str(cells["bucket"]), "status": "ok"}
        for name, value in cells.items():
            if name not in LAYER_TABLE_COLUMNS and num(value) is not None:
                rec[metric_from_wandb(name)] = float(value)
        yield rec


# ---- history -> rows ----------------------------------------------------------------------------

def history_rows(history: Iterable[Mapping[str, Any]]
                 ) -> tuple[dict[int, dict], dict[int, dict], dict[tuple[int, int, str, str], dict]]:
    """(train rows by step, eval rows by step, telemetry records by (step, layer, site, bucket)).
    A resumed run logs some steps twice: the last row wins."""
    history = list(history)
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    spectra: dict[tuple[int, int, str, str], dict] = {}
    scalars = has_layer_scalars(history)
    for row in history:
        step = num(row.get("trainer/step"))
        if step is None:
            continue
        step = int(step)
        columns = {c: v for k, v in row.items() if (c := column_of_key(k)) is not None}
        if "train_loss" in columns:
            train[step] = {"step": step, **{c: columns[c] for c in TRAIN_COLUMNS if c in columns}}
        if "eval_loss" in columns:
            evals[step] = {"step": step, **{c: columns[c] for c in EVAL_COLUMNS if c in columns}}
        table = row.get(LAYER_TABLE_KEY)
        if not scalars and isinstance(table, Mapping) and "data" in table:
            for rec in table_records(table):
                spectra[(rec["step"], rec["layer"], rec["site"], rec["bucket"])] = rec
        for key, value in row.items():
            m = SPECTRAL_KEY.match(key)
            if m is None or num(value) is None:
                continue
            site, bucket, metric, layer = m.group(1), m.group(2), metric_from_wandb(m.group(3)), int(m.group(4))
            rec = spectra.setdefault((step, layer, site, bucket), {
                "step": step, "layer": layer, "site": site, "bucket": bucket, "status": "ok"})
            rec[metric] = float(value)
    return train, evals, spectra
