"""Ctrl-C and SIGTERM that never cut a clean-up in half.

The CLI installs :func:`install`: SIGINT raises KeyboardInterrupt and
SIGTERM raises :class:`Terminated` (a KeyboardInterrupt), so every ``with``
block unwinds and removes what it made. Inside :func:`deferred` (used around
teardown, probe detach and result writes) a signal is only remembered and
raised when the outermost deferred block ends. After the first signal,
further ones are ignored: the run is already stopping.

A raise can be swallowed: when the signal lands inside a fork hook, a
``__del__`` or a weakref callback, Python prints "Exception ignored" and
goes on (the "Exception ignored" report of it is kept quiet). So the signal
is also remembered, :func:`check` (called at every
progress step, never inside a clean-up) raises it again, and :func:`received`
lets the CLI exit with the signal's code even if the command ran to its end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so every clean-up path runs."""


_depth = 0
_pending: KeyboardInterrupt | None = None
_stopping = False
_received: KeyboardInterrupt | None = None
_delivered = False
_main_pid = os.getpid()


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending, _stopping, _received
    if os.getpid() != _main_pid:
        # pyroute2 forks helpers that inherit this handler and are stopped with SIGTERM:
        # they must die the default way, not run the parent's clean-up paths.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _stopping:
        return
    exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    _received = exc
    if _depth:
        _pending = exc
        return
    _stopping = True
    raise exc


def install() -> None:
    """Route SIGINT and SIGTERM through the deferring handler (main thread only)."""
    global _main_pid, _pending, _stopping, _received, _delivered
    _main_pid = os.getpid()
    _pending, _stopping, _received, _delivered = None, False, None, False
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    if sys.unraisablehook is not _quiet_unraisable:
        _quiet_unraisable.default = sys.unraisablehook  # type: ignore[attr-defined]
        sys.unraisablehook = _quiet_unraisable


def _exit_at_start(signum: int, frame: FrameType | None) -> None:
    word, code = ("terminated", 143) if signum == signal.SIGTERM else ("interrupted", 130)
    os.write(2, f"kpbench: {word} while starting; nothing was created\n".encode())
    os._exit(code)


def install_at_start() -> None:
    """Until :func:`install`: a signal ends the process at once with the usual code and
    message (nothing exists yet to clean up; imports take seconds on a slow VM)."""
    signal.signal(signal.SIGINT, _exit_at_start)
    signal.signal(signal.SIGTERM, _exit_at_start)


def ignore() -> None:
    """Ignore SIGINT and SIGTERM from now on (the process is about to exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _quiet_unraisable(info: sys.UnraisableHookArgs) -> None:
    """Our own swallowed raise is no error to print: :func:`check` raises it again."""
    if info.exc_value is not None and info.exc_value is _received:
        return
    _quiet_unraisable.default(info)  # type: ignore[attr-defined]


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block (and any enclosing deferred block) ends."""
    global _depth, _pending, _stopping, _delivered
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            exc, _pending = _pending, None
            _stopping = _delivered = True
            raise exc


def raise_pending() -> None:
    """Inside a deferred block, at a point where stopping leaves nothing half-done (between
    two netlink requests of a long sync): raise a held signal now, not at the block's end."""
    global _pending, _stopping, _delivered
    if _pending is not None:
        exc, _pending = _pending, None
        _stopping = _delivered = True
        raise exc


def check() -> None:
    """Raise a signal whose first raise was swallowed; call only between steps of work.

    Raises once, and never while the first raise is still unwinding: the clean-up
    it sets off may report progress too.
    """
    global _delivered
    unwinding = isinstance(sys.exc_info()[1], KeyboardInterrupt)
    if _received is not None and not _delivered and not _depth and not unwinding:
        _delivered = True
        raise _received


def received() -> KeyboardInterrupt | None:
    """The SIGINT/SIGTERM this process got, if any."""
    return _received
