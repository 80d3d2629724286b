"""Credentials kept out of configs, run ids, W&B configs and analysis runs.

A credential is recognised by its name (a config key or an environment variable such as
``WANDB_API_KEY``, ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``; not ``train_tokens``) and, for
environment variables, by its value (8 characters or more) wherever it shows up.

Floor 0 of ``sweep``: imports only the standard library; anything in ``sweep`` may import it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Optional

REDACTED = "<redacted>"
# Config keys and environment variables whose values are credentials: a name with one of these
# words between separators (WANDB_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY; not train_tokens).
_SECRET_NAME = re.compile(r"(^|[_.-])(api[_-]?key|apikey|token|secret|passw(or)?d|credentials?|"
                          r"private[_-]?key|access[_-]?key)([_.-]|$)", re.I)


def env_secrets(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Values of environment variables that look like credentials (WANDB_API_KEY, *_TOKEN, ...)."""
    environ = os.environ if environ is None else environ
    return sorted({v for k, v in environ.items() if _SECRET_NAME.search(k) and v and len(v) >= 8},
                  key=len, reverse=True)


def secrets_in(text: str, environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Names of the credential-like environment variables whose value occurs in ``text``."""
    environ = os.environ if environ is None else environ
    return sorted(k for k, v in environ.items()
                  if _SECRET_NAME.search(k) and v and len(v) >= 8 and v in str(text))


def redact_secrets(obj: Any, secrets: Optional[Iterable[str]] = None) -> Any:
    """A copy of ``obj`` (nested dicts/lists) with credentials replaced by ``<redacted>``.

    Values under credential-like keys go, and so does any string containing the value of a
    credential-like environment variable (e.g. a resolved ``${oc.env:WANDB_API_KEY}``).
    """
    secrets = env_secrets() if secrets is None else [s for s in secrets if s]

    def walk(x: Any, key: str = "") -> Any:
        if isinstance(x, Mapping):
            return {k: walk(v, str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, key) for v in x]
        if key and _SECRET_NAME.search(key) and x not in (None, "", False):
            return REDACTED
        if isinstance(x, str):
            for s in secrets:
                if s in x:
                    x = x.replace(s, REDACTED)
        return x

    return walk(obj)
