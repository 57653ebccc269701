"""The project's own error types.

Expected failures (bad input, a missing kernel feature, a busy resource) are
raised as :class:`KpbenchError`; the CLI prints them as one line and exits 2.
Anything else is a bug: the CLI prints one line saying where its traceback
was written (bench.cli) and exits 70.
"""

from __future__ import annotations

MAX_MESSAGE = 600


class KpbenchError(Exception):
    """An expected error, reported to the user as one line."""

    exit_code = 2


class InputError(KpbenchError):
    """Malformed user input: a services file, a scenario, a CLI argument.

    The message names the file, the object and the field, and the fix.
    """

    def __init__(self, message: str, *, source: str | None = None, obj: str | None = None,
                 field: str | None = None) -> None:
        self.source = source
        self.obj = obj
        self.field = field
        # A key or name quoted from a hostile input may be huge too.
        where = ": ".join(p if len(p) <= 200 else f"{p[:120]}...{p[-60:]}"
                          for p in (source, obj, field) if p)
        where = " ".join(where.split())
        # One line, always: parsers' own messages (YAML, TOML) may span several.
        message = " ".join(message.split())
        if len(message) > MAX_MESSAGE:
            # A value quoted from a hostile input may be megabytes: keep both ends (the
            # problem and the fix), never a screenful.
            message = f"{message[:MAX_MESSAGE - 160]} ... {message[-150:]}"
        super().__init__(f"{where}: {message}" if where else message)


class FeatureMissing(KpbenchError):
    """The kernel or the machine lacks something a datapath or probe needs."""


class FeatureBroken(KpbenchError):
    """A feature the kernel has fails in kpbench's own code or tools (not a kernel limit)."""


class ApplyError(KpbenchError):
    """Programming a datapath failed; carries the tool's own message."""


class ApplyTimeout(ApplyError):
    """Programming a datapath took longer than the allowed time (the tool was stopped)."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds
