"""Validation and coercion of optimizer hyper-parameters (values arrive from YAML)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """Return `value` as a float after checking it is a real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def integer(name: str, value: Any, *, low: int | None = None) -> int:
    """Return `value` as an int after checking it is an integer >= low."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def betas(name: str, value: Any) -> tuple[float, float]:
    """A pair of decay rates, each in [0, 1)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair [beta1, beta2], got {value!r}")
    return tuple(number(f"{name}[{i}]", v, low=0.0, high=1.0, high_open=True)  # type: ignore[return-value]
                 for i, v in enumerate(value))


def dtype(name: str, value: Any) -> torch.dtype:
    """A dtype given as a torch.dtype or one of 'bfloat16', 'bf16', 'float32', 'fp32'."""
    if isinstance(value, torch.dtype) and value in _DTYPES.values():
        return value
    if isinstance(value, str) and value in _DTYPES:
        return _DTYPES[value]
    raise ValueError(f"{name} must be one of {sorted(_DTYPES)}, got {value!r}")


def coefficients(name: str, value: Any) -> tuple[tuple[float, float, float], ...]:
    """A non-empty list of (a, b, c) Newton–Schulz triples."""
    bad = ValueError(f"{name} must be a non-empty list of [a, b, c] triples, got {value!r}")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise bad
    out = []
    for triple in value:
        if isinstance(triple, (str, bytes)) or not isinstance(triple, Sequence) or len(triple) != 3:
            raise bad
        out.append(tuple(number(name, v) for v in triple))
    return tuple(out)  # type: ignore[return-value]
