"""Faults for the fault tests.

- ``CLAIMGATE_WORKER_CRASH_AT=<point>:<n>`` makes the worker process ``SIGKILL`` itself the n-th time it reaches
  ``point`` (``before_commit``: the batch is written but its transaction not committed; ``after_commit``:
  committed, not yet acknowledged). Unset, a point costs one comparison.
- ``CLAIMGATE_WORKER_STALL=activities`` (or ``others``) keeps that lane from reading anything: the other lane
  runs ahead of it as far as it likes, as a slow lane or a lagging worker would let it.
"""

from __future__ import annotations

import os
import signal

_VARIABLE = "CLAIMGATE_WORKER_CRASH_AT"


def _parse(raw: str) -> tuple[str, int]:
    point, _, count = raw.partition(":")
    return point, int(count or "1")


_armed: tuple[str, int] | None = _parse(os.environ[_VARIABLE]) if os.environ.get(_VARIABLE) else None
_reached: dict[str, int] = {}
_stalled = frozenset(os.environ.get("CLAIMGATE_WORKER_STALL", "").split(",")) - {""}


def crash_point(point: str) -> None:
    if _armed is None or _armed[0] != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] >= _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def stalled(lane: str) -> bool:
    return lane in _stalled
