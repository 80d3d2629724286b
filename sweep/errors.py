"""Errors the user causes and can fix (a bad config, grid, data path, cluster request).

They derive from Hydra's CompactHydraException, so ``specsweep-train`` prints only their
message (no traceback; ``HYDRA_FULL_ERROR=1`` still shows it) and exits non-zero. Their text never
holds a secret: it is redacted when the error is made (sweep.credentials).
"""

from __future__ import annotations

from hydra.errors import CompactHydraException

from specsweep.sweep.credentials import redact_text


class UserError(CompactHydraException):
    """A problem with what the user asked for, reported as a short message."""

    def __init__(self, message: object = "") -> None:
        super().__init__(redact_text(message))


class ConfigError(UserError, ValueError):
    """A run config that cannot be trained, with every problem found listed."""


class SweepError(UserError):
    """A grid that cannot be launched, some of its runs failed, or a sweep with nothing to analyse."""


class DataError(UserError, ValueError):
    """Data that cannot be read or does not fit the run (the message names the file)."""
