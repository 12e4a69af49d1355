"""Hub access that fails fast and clearly: one line naming what was asked and how to provide it."""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
from urllib.parse import urlparse

from prefbench.io.errors import UserError


@functools.lru_cache(maxsize=1)
def ensure_reachable_or_offline(timeout: float = 3.0) -> bool:
    """Probe the hub endpoint once per process. If it cannot be reached, switch huggingface_hub and
    datasets to offline mode (cached items still load) instead of retrying each file for a minute."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import huggingface_hub.constants as hub_constants

    url = urlparse(hub_constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        print(f"prefbench: {url.hostname} is unreachable; using the local cache only (HF_HUB_OFFLINE=1)",
              file=sys.stderr)
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        hub_constants.HF_HUB_OFFLINE = True
        with contextlib.suppress(ImportError):
            import datasets.config

            datasets.config.HF_HUB_OFFLINE = True
        return False


@contextlib.contextmanager
def friendly_hub_errors(kind: str, name: str):
    if not os.path.exists(name):
        ensure_reachable_or_offline()
    try:
        yield
    except (OSError, ValueError) as exc:
        if os.path.exists(name):
            raise UserError(f"{kind} {name!r}: cannot load the local path: {str(exc).splitlines()[0]}") from exc
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        how = ("the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache"
               if offline else "it could not be fetched from the hub")
        raise UserError(
            f"{kind} {name!r} is unavailable: {how}. Download it once with network access "
            f"(or copy it into HF_HOME), or pass a local directory path instead."
        ) from exc
