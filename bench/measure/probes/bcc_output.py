"""What BCC, clang and libbpf print while compiling and loading a BPF program.

They write the compiler's diagnostics and the verifier's log to file
descriptor 2, not to an exception: :func:`captured_stderr` catches that text
so an error can carry it (the line that matters is there, not in BCC's
"Failed to compile BPF module").
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


class Captured:
    """The text written to fd 2 inside :func:`captured_stderr` (complete after the block)."""

    text = ""

    def summary(self, limit: int = 6) -> str:
        """The lines that say what went wrong (compiler errors, else the log's last lines)."""
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error:" in ln]
        return " | ".join((errors or lines[-limit:])[:limit])


@contextlib.contextmanager
def captured_stderr() -> Iterator[Captured]:
    """Redirect fd 2 to a temporary file for the block; its text lands in the yielded object."""
    out = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            out.text = f.read().decode(errors="replace")
