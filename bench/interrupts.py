"""Ctrl-C and SIGTERM that never cut a clean-up in half.

The CLI installs :func:`install`: SIGINT raises KeyboardInterrupt and
SIGTERM raises :class:`Terminated` (a KeyboardInterrupt), so every ``with``
block unwinds and removes what it made. Inside :func:`deferred` (used around
teardown, probe detach and result writes) a signal is only remembered and
raised when the outermost deferred block ends. After the first signal,
further ones are ignored: the run is already stopping.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so every clean-up path runs."""


_depth = 0
_pending: KeyboardInterrupt | None = None
_stopping = False
_main_pid = os.getpid()


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending, _stopping
    if os.getpid() != _main_pid:
        # pyroute2 forks helpers that inherit this handler and are stopped with SIGTERM:
        # they must die the default way, not run the parent's clean-up paths.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _stopping:
        return
    exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if _depth:
        _pending = exc
        return
    _stopping = True
    raise exc


def install() -> None:
    """Route SIGINT and SIGTERM through the deferring handler (main thread only)."""
    global _main_pid
    _main_pid = os.getpid()
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block (and any enclosing deferred block) ends."""
    global _depth, _pending, _stopping
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            exc, _pending = _pending, None
            _stopping = True
            raise exc
