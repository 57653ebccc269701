"""The ``handlers`` fixture: bench.interrupts installed for a test, everything restored after."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import pytest

from bench import interrupts


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    interrupts.install()
    yield
    interrupts.install()  # reset the module's state for the next test
    sys.unraisablehook = hook
    for s, h in saved.items():
        signal.signal(s, h)
