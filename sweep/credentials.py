"""Credentials: which values are secret, and how they are kept out of messages, logs and files.

A secret is the value (8 characters or more) of an environment variable whose name looks like a
credential (``WANDB_API_KEY``, ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``; not ``train_tokens``).
Secrets stay in the environment: configs, overrides, run ids and run directories never hold one,
and every text that could echo one shows ``***`` in its place. A config key or override whose
name looks like a credential's (``+wandb_api_key=...``, ``+db_password=...``) is refused whatever
its value, which no message shows.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

REDACTED = "***"
# A name holding one of these words anywhere is a credential's name (``dbpassword``, ``HF_TOKEN``,
# ``authtoken``). ``token`` counts only in the singular: ``eval_tokens``, ``tokens_per_s``,
# ``max_tokens`` are counts of tokens, ``tokenizer``/``tokenise`` a tool, not credentials.
_SECRET_NAME = re.compile(r"api[_-]?key|passw(or)?d|secret|credential|private[_-]?key|access[_-]?key|"
                          r"token(?!s|i[sz])", re.I)
_OVERRIDE_KEY = re.compile(r"^[+~]*([A-Za-z_][\w.\-/@]*)=")  # key=value on a Hydra command line
_ENV_READ = re.compile(r"\$\{\s*oc\.env\s*:\s*([A-Za-z_][A-Za-z0-9_]*)")  # ${oc.env:NAME...}
_MIN_LEN = 8  # shorter values are too likely to occur by chance (and too weak to be keys)


def is_secret_name(name: str) -> bool:
    """True for names of credentials (``WANDB_API_KEY``, ``logger.api_key``), not ``train_tokens``."""
    return bool(_SECRET_NAME.search(name))


def _secret_items(environ: Optional[Mapping[str, str]]) -> list[tuple[str, str]]:
    environ = os.environ if environ is None else environ
    return [(k, v) for k, v in environ.items() if is_secret_name(k) and v and len(v) >= _MIN_LEN]


def env_secrets(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Values of environment variables that look like credentials, longest first."""
    return sorted({v for _, v in _secret_items(environ)}, key=len, reverse=True)


def secrets_in(text: Any, environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Names of the credential-like environment variables whose value occurs in ``text``."""
    text = str(text)
    return sorted(k for k, v in _secret_items(environ) if v in text)


def redact_text(text: Any, secrets: Optional[Iterable[str]] = None) -> str:
    """``text`` with every secret replaced by ``***``."""
    text = str(text)
    for s in env_secrets() if secrets is None else sorted(filter(None, secrets), key=len, reverse=True):
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def redact_secrets(obj: Any, secrets: Optional[Iterable[str]] = None) -> Any:
    """A copy of ``obj`` (nested dicts/lists) with credentials replaced by ``***``.

    Values under credential-like keys go, and so does any string containing the value of a
    credential-like environment variable (e.g. a resolved ``${oc.env:WANDB_API_KEY}``).
    """
    secrets = env_secrets() if secrets is None else [s for s in secrets if s]

    def walk(x: Any, key: str = "") -> Any:
        if isinstance(x, Mapping):
            return {k: walk(v, str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, key) for v in x]
        if key and is_secret_name(key) and x not in (None, "", False):
            return REDACTED
        if isinstance(x, str):
            return redact_text(x, secrets)
        return x

    return walk(obj)


def secret_override_key(arg: str) -> Optional[str]:
    """The key of an override ``key=value`` whose key names a credential (``+db_password=x``), else None."""
    m = _OVERRIDE_KEY.match(str(arg))
    return m.group(1) if m and is_secret_name(m.group(1)) else None


def redact_argument(arg: Any, secrets: Optional[Iterable[str]] = None) -> str:
    """``arg`` with secrets replaced by ``***``, and the whole value of an override whose key names
    a credential (``+db_password=***``). ``secrets``: env_secrets(), when the caller has read them."""
    arg = str(arg)
    if secret_override_key(arg):
        return f"{arg.partition('=')[0]}={REDACTED}"
    return redact_text(arg, secrets)


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested config."""
    if isinstance(node, Mapping):
        return [kv for k, v in node.items() for kv in _leaves(v, f"{prefix}{k}.")]
    if isinstance(node, (list, tuple)):
        return [kv for i, v in enumerate(node) for kv in _leaves(v, f"{prefix}{i}.")]
    return [(prefix[:-1], node)]


def config_credential_problems(config: Mapping[str, Any],
                               environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """One line per key of a composed config that holds a credential: a key named like one (set,
    whatever its value: shown as ``***``), or a value of a credential-like environment variable."""
    secret_env = dict(_secret_items(environ))  # the environment, scanned once for all the values
    problems = []
    for key, value in _leaves(config):
        if value is not None and is_secret_name(key):
            problems.append(f"{key}={REDACTED}: a credential by its name; credentials stay in the environment "
                            "(W&B reads WANDB_API_KEY there), never in configs or overrides")
        elif isinstance(value, str) and (names := secrets_in(value, secret_env)):
            problems.append(f"{key}: holds the value of ${names[0]}; credentials stay in the environment")
    return problems


def refuse_secret_arguments(args: Sequence[str], what: str = "argument") -> Optional[str]:
    """An error message if an argument carries a secret (shown redacted), reads one into the
    config (``${oc.env:WANDB_API_KEY}``) or sets a key named like a credential (``+db_password=``,
    whatever its value), else None."""
    for arg in args:
        key = secret_override_key(arg)
        if key:
            return (f"the {what} {redact_argument(arg)!r} sets {key}, a credential by its name: credentials stay "
                    "in the environment (W&B reads WANDB_API_KEY there), never in configs or overrides; "
                    "nothing was run")
        names = secrets_in(arg)
        if names:
            return (f"the {what} {redact_text(arg)!r} carries the value of ${names[0]}: credentials stay in "
                    "the environment (e.g. WANDB_API_KEY), never in configs or overrides; nothing was run")
        names = [n for n in _ENV_READ.findall(arg) if is_secret_name(n)]
        if names:
            return (f"the {what} {arg!r} reads the credential ${names[0]} into the config: credentials stay "
                    "in the environment (W&B reads WANDB_API_KEY there), never in configs or overrides; "
                    "nothing was run")
    return None


def exit_if_credentials_in(argv: Sequence[str]) -> None:
    """Exit with a short error (status 1) if a command-line argument carries a credential."""
    problem = refuse_secret_arguments(argv, "command-line argument")
    if problem:
        raise SystemExit(f"error: {problem}")


class RedactingFilter(logging.Filter):
    """Logging filter that replaces secrets in a record's message and traceback by ``***``.

    Attached to the handlers of conf/hydra/{job,hydra}_logging, so train.log and the console
    never show a secret, whatever logged it.
    """

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.secrets = env_secrets()  # the environment of the process, read once

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the handler's to report, not ours
            return True
        clean = redact_text(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        return True
