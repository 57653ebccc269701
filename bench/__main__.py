import os
import sys

from bench import interrupts
from bench.cli import main

code = main()
if interrupts.received() is not None:
    # Stopped by a signal: everything the run made is already removed (its with blocks ran)
    # and its message printed. End now, with that exit code: the interpreter's own shutdown
    # (finalizers, atexit) once ended such a run by SIGINT (-2) after its message.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
