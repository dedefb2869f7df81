"""Byte progress bars that stay out of the way: off unless stderr is a terminal.

Set ``MLFLOW_ARCHIVE_NO_PROGRESS=1`` (or tqdm's own ``TQDM_DISABLE=1``) to turn them off
everywhere; the CLI's ``--quiet`` and the API's ``progress=False`` turn them off per call.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm

_OFF_VALUES = {"1", "true", "yes", "on"}


def enabled(requested: bool | None) -> bool:
    """Whether to show progress: an explicit request wins, else only on an interactive stderr."""
    if requested is not None:
        return requested
    for variable in ("MLFLOW_ARCHIVE_NO_PROGRESS", "TQDM_DISABLE"):
        if os.environ.get(variable, "").strip().lower() in _OFF_VALUES:
            return False
    return sys.stderr.isatty()


@contextlib.contextmanager
def byte_progress(
    total: int | None, description: str, requested: bool | None
) -> Iterator[Callable[[int], None] | None]:
    """A callback to report bytes done, or None when progress is off."""
    if not enabled(requested):
        yield None
        return
    with tqdm(
        total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
        file=sys.stderr, leave=False,
    ) as bar:
        yield bar.update
