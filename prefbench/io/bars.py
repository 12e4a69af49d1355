"""One-line progress bars (tqdm) for the passes of a job that take more than a couple of seconds: the reference
pass, sampling, judging, reward-model training. Shown only on a terminal, only after 2 seconds, and
cleared when done; a sweep that draws one overall line turns them off (``shown``)."""
from __future__ import annotations

import contextlib

from tqdm.auto import tqdm

_ENABLED = [True]


def bar(iterable, desc: str, unit: str = "batch"):
    return tqdm(iterable, desc=desc, unit=unit, delay=2, leave=False, dynamic_ncols=True,
                disable=None if _ENABLED[-1] else True)  # None: off when not a terminal


@contextlib.contextmanager
def shown(enabled: bool):
    """Bars on or off for the passes inside the block."""
    _ENABLED.append(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.pop()
