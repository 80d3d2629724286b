"""Can the W&B server be reached at all? One TCP connect before an online start.

An online ``wandb.init`` against a server that refuses connections (down, a wrong host, a compute
node without network) waits its whole ``logger.init_timeout`` (60 s by default, plus ~10 s of
W&B's own) before it fails. Measured (issue 22 item 12, 2-core machine, server on a closed
loopback port): nothing spins during that wait (under 0.1 s of CPU in the training process and
in wandb-core together), no retries go on after the offline fall-back, and the run trains at the
same speed as an offline one; the first run of a grid was slow only because it waited out the
timeout. A refused or unresolvable server answers a TCP connect at once, so the run goes offline
at once. Behind a proxy only W&B can tell, and it is left to try.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from typing import Mapping, Optional

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
CONNECT_TIMEOUT_S = 5.0


def unreachable(base_url: str, environ: Mapping[str, str] = os.environ,
                timeout: float = CONNECT_TIMEOUT_S) -> Optional[str]:
    """Why ``base_url`` cannot be reached (refused, unresolvable, no answer), or None when it
    answers or cannot be judged from here (a proxy is configured, an odd URL)."""
    if any(environ.get(v) for v in PROXY_VARS):
        return None
    parts = urllib.parse.urlsplit(base_url)
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not host:
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as e:
        return f"cannot resolve {host} ({e.strerror or e})"
    except socket.timeout:
        return f"no answer from {host}:{port} within {timeout:.0f} s"
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"


def wandb_server_unreachable() -> Optional[str]:
    """:func:`unreachable` for the server W&B would use (WANDB_BASE_URL, its settings files),
    None when a proxy is set there or W&B's settings cannot be read."""
    try:
        import wandb

        settings = wandb.setup().settings
        if settings.https_proxy or settings.http_proxy:
            return None
        return unreachable(str(settings.base_url))
    except Exception:  # noqa: BLE001 - cannot tell: wandb.init decides as before
        return None
