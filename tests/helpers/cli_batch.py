"""Run many ``python -m bench ARGV`` command lines fast: one interpreter imports the CLI
once, then forks a child per command line, which runs ``bench/__main__.py`` as
``python -m bench`` would (runpy), with its own stderr, and reports its exit code,
stderr, CPU time and peak memory (the child's own rusage).

Used by tests/unit/test_bad_input_corpus.py: over a hundred interpreters, each
importing the CLI anew, would cost a minute of CPU on a loaded machine.

    python -m tests.helpers.cli_batch < commands.jsonl > outcomes.jsonl
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import tempfile

# Imported once here and inherited by every child: the CLI and the readers (numpy).
import bench.cli
import bench.results.store  # noqa: F401

WALL_LIMIT_S = 60


def _child(argv: list[str], err_fd: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(err_fd, 2)
    sys.argv = ["python -m bench", *argv]
    code = 0
    try:
        runpy.run_module("bench", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # what `python -m bench` would print before dying
        import traceback

        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code)


def run_one(argv: list[str]) -> dict[str, object]:
    """Fork, run the command line, and return what the child did."""
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            signal.alarm(WALL_LIMIT_S)  # a hang ends as a failure, not a stuck test
            _child(argv, err.fileno())
        _, status, usage = os.wait4(pid, 0)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    return {"code": os.waitstatus_to_exitcode(status), "stderr": text,
            "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run_one(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
