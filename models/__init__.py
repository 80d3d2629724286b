"""The GPT family used by specsweep: plain PyTorch, no configs, files or logging.

``models.config`` (GPTConfig, the FFN width rule) is plain Python, so the analysis can use it
without torch; ``GPT`` (models.gpt) is imported on first use.
"""

from importlib import import_module
from typing import Any

_HOME = {"GPTConfig": "config", "GPT": "gpt"}
__all__ = ["GPTConfig", "GPT"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)
