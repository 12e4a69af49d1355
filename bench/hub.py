"""Turn the hub's offline failures into one clear line instead of a deep traceback."""
from __future__ import annotations

import contextlib
import os

from bench.errors import UserError


@contextlib.contextmanager
def friendly_hub_errors(kind: str, name: str):
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
