"""Run kpbench inside a real Linux kernel with virtme-ng (``kpbench vm run``).

virtme-ng boots a kernel image under QEMU with the host's root filesystem
shared read-only (9p), so the guest sees this checkout, its ``.venv`` and the
distro's tools as they are; ``--rwdir`` makes the checkout's ``results/`` and
a scratch folder writable, so results land where a host run puts them. The
guest runs one command as root and powers off.

Acceleration is chosen by trying: KVM first when ``/dev/kvm`` is usable,
with a short boot limit (a KVM guest on some nested hosts aborts or hangs
early), then TCG with a one-line notice. The guest prints a marker as soon
as it runs our script, which is how a boot is told from a hang. The choice
and the kernel go into the guest's environment (``KPBENCH_VM_ACCEL``,
``KPBENCH_VM_KERNEL``), from where :func:`guest_environment` puts them into
every result. QEMU runs in its own process group and is killed on a
timeout, on Ctrl-C and on SIGTERM: nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from bench.errors import KpbenchError
from bench.paths import CHECKOUT

BOOT_DIR = Path("/boot")
MARKER = "kpbench-vm: guest running"
ENV_ACCEL = "KPBENCH_VM_ACCEL"
ENV_KERNEL = "KPBENCH_VM_KERNEL"
KVM_BOOT_TIMEOUT = 45.0  # a KVM guest runs our script within seconds, or never
TCG_BOOT_TIMEOUT = 240.0  # measured here: ~30 s; allow for a loaded machine
DEFAULT_CPUS = 2
DEFAULT_MEMORY = "8G"
KILL_GRACE = 5.0
# Whether a KVM guest of a kernel booted here, kept until the host reboots (/run is a
# tmpfs): on hosts where /dev/kvm opens but guests abort (nested virtualisation), the
# 45 s KVM attempt is paid once, not by every run.
KVM_VERDICTS = Path("/run/kpbench/kvm-guests.json")
KVM_BOOTS = "boots"


class VmError(KpbenchError):
    """The VM could not be started, did not boot, or did not finish in time."""


@dataclass
class VmResult:
    """What a VM run did: the guest command's exit code and how the VM ran."""

    returncode: int
    accel: str  # "kvm" | "tcg"
    kernel: Path
    boot_seconds: float  # start of QEMU -> our script running in the guest
    seconds: float  # whole run, boot included
    notices: list[str] = field(default_factory=list)


def guest_environment() -> dict[str, Any]:
    """Keyword arguments for :func:`bench.results.environment.capture_environment` in this process.

    Inside a ``kpbench vm`` guest: ``where="vm"`` with the accelerator and the
    kernel image; on the host: nothing (the defaults say "host").
    """
    accel = os.environ.get(ENV_ACCEL)
    if accel not in ("kvm", "tcg"):
        return {}
    return {"where": "vm", "vm": {"accel": accel,
                                  "kernel": os.environ.get(ENV_KERNEL) or platform.release()}}


def in_guest() -> bool:
    """True inside a guest that ``kpbench vm`` started."""
    return bool(guest_environment())


def installed_kernels(boot: Path = BOOT_DIR) -> list[Path]:
    """Kernel images under /boot, oldest version first."""
    def version_key(p: Path) -> list[int | str]:
        return [int(t) if t.isdigit() else t
                for t in re.split(r"[.-]", p.name.removeprefix("vmlinuz-"))]

    return sorted(boot.glob("vmlinuz-*"), key=version_key)


def find_kernel(spec: str | None, boot: Path = BOOT_DIR) -> Path:
    """The kernel image for ``--kernel``: a path, a version under /boot, or the newest there."""
    images = installed_kernels(boot)
    known = ", ".join(p.name.removeprefix("vmlinuz-") for p in images) or "none"
    if spec is None:
        if not images:
            raise VmError(f"no kernel image under {boot}: run scripts/setup.sh (it installs "
                          "Debian's linux-image-amd64) or pass --kernel PATH")
        return images[-1]
    path = Path(spec)
    if path.is_file():
        return path.resolve()
    candidate = boot / f"vmlinuz-{spec}"
    if candidate.is_file():
        return candidate
    raise VmError(f"kernel {spec!r} not found: neither a file nor a version under {boot} "
                  f"(installed: {known})")


def kernel_release(image: Path) -> str:
    """The release string of a /boot image (``vmlinuz-<release>``), else the file name."""
    return image.name.removeprefix("vmlinuz-")


def vng_binary() -> str:
    """virtme-ng's ``vng``: next to this interpreter (the project's .venv), else on PATH."""
    local = Path(sys.executable).parent / "vng"
    if local.exists():
        return str(local)
    found = shutil.which("vng")
    if found:
        return found
    raise VmError("virtme-ng (vng) is not installed: run scripts/setup.sh, which installs it "
                  "into .venv")


def kvm_usable() -> bool:
    """/dev/kvm exists and we may open it (whether a guest really boots is tried later)."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def remembered_kvm(kernel: Path, verdicts: Path = KVM_VERDICTS) -> str | None:
    """How a KVM guest of ``kernel`` did since the host booted: "boots", the reason it
    did not, or None if not tried."""
    try:
        known = json.loads(verdicts.read_text())
    except (OSError, ValueError):
        return None
    verdict = known.get(str(kernel)) if isinstance(known, dict) else None
    return verdict if isinstance(verdict, str) else None


def remember_kvm(kernel: Path, verdict: str, verdicts: Path = KVM_VERDICTS) -> None:
    """Keep how a KVM guest of ``kernel`` did (best effort: a cache, not a record)."""
    try:
        known = json.loads(verdicts.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    known[str(kernel)] = verdict
    with contextlib.suppress(OSError):
        verdicts.parent.mkdir(parents=True, exist_ok=True)
        verdicts.write_text(json.dumps(known) + "\n")


def guest_script(argv: Sequence[str], accel: str, kernel: Path, scratch: Path) -> str:
    """The shell line the guest runs: marker, environment, the command, its exit code."""
    env = {ENV_ACCEL: accel, ENV_KERNEL: str(kernel), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONUNBUFFERED": "1"}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    rc_file = shlex.quote(str(scratch / "rc"))
    return (f"echo {shlex.quote(MARKER)} $(uname -r); export {exports}; "
            f"cd {shlex.quote(str(CHECKOUT))}; {shlex.join(argv)}; echo $? > {rc_file}")


def kpbench_argv(args: Sequence[str]) -> list[str]:
    """The guest command for ``kpbench ARGS`` (the same interpreter and checkout)."""
    return [sys.executable, "-m", "bench", *args]


def pytest_argv(args: Sequence[str]) -> list[str]:
    """The guest command for ``pytest ARGS``; the checkout is read-only there, so no cache."""
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


@dataclass
class VmRunner:
    """Boots ``kernel`` under virtme-ng and runs one command in it."""

    kernel: Path
    cpus: int = DEFAULT_CPUS
    memory: str = DEFAULT_MEMORY
    timeout: float = 3 * 3600.0
    rwdirs: tuple[Path, ...] = ()
    accels: tuple[str, ...] | None = None  # None: KVM if usable, then TCG
    boot_timeouts: dict[str, float] = field(default_factory=lambda: {
        "kvm": KVM_BOOT_TIMEOUT, "tcg": TCG_BOOT_TIMEOUT})
    vng: str | None = None  # default: vng_binary()
    verdicts: Path = KVM_VERDICTS  # how KVM guests did since the host booted
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise VmError(f"--cpus {self.cpus}: at least 1")
        if not re.fullmatch(r"\d+[KMGT]?", self.memory):
            raise VmError(f"--memory {self.memory!r}: a size such as 4G or 8192M")

    def run(self, argv: Sequence[str]) -> VmResult:
        """Run ``argv`` in the guest; raises VmError if no accelerator boots or on timeout."""
        notices: list[str] = []
        accels = self.accels or self.default_accels(notices)
        start = time.monotonic()
        for i, accel in enumerate(accels):
            last = i == len(accels) - 1
            with tempfile.TemporaryDirectory(prefix="kpbench-vm-") as tmp:
                scratch = Path(tmp)
                outcome = self._attempt(accel, argv, scratch)
                if accel == "kvm":
                    remember_kvm(self.kernel, KVM_BOOTS if isinstance(outcome, VmResult)
                                 else outcome, self.verdicts)
                if isinstance(outcome, VmResult):
                    outcome.notices = notices
                    outcome.seconds = time.monotonic() - start
                    return outcome
            if last:
                raise VmError(f"the {accel.upper()} guest did not boot: {outcome}")
            notice = (f"kpbench: a {accel.upper()} guest did not boot ({outcome}); "
                      f"falling back to {accels[i + 1].upper()} (slower; recorded in the result)")
            print(notice, file=self.err, flush=True)
            notices.append(notice)
        raise AssertionError("unreachable")

    def default_accels(self, notices: list[str]) -> tuple[str, ...]:
        """KVM then TCG where /dev/kvm is usable and KVM guests were not seen failing
        since the host booted; else TCG (saying why, when KVM failed before)."""
        if not kvm_usable():
            return ("tcg",)
        verdict = remembered_kvm(self.kernel, self.verdicts)
        if verdict is None or verdict == KVM_BOOTS:
            return ("kvm", "tcg")
        notice = (f"kpbench: a KVM guest of this kernel did not boot earlier since the host "
                  f"started ({verdict}); using TCG (slower; recorded in the result)")
        print(notice, file=self.err, flush=True)
        notices.append(notice)
        return ("tcg",)

    def accelerator(self) -> str:
        """The accelerator a run would get here, "kvm" or "tcg": remembered since the host
        booted, else found by booting a KVM guest that runs ``true``."""
        if not kvm_usable():
            return "tcg"
        verdict = remembered_kvm(self.kernel, self.verdicts)
        if verdict is not None:
            return "kvm" if verdict == KVM_BOOTS else "tcg"
        try:
            replace(self, accels=("kvm",)).run(["true"])
        except VmError:
            return "tcg"
        return "kvm"

    def command(self, accel: str, argv: Sequence[str], scratch: Path) -> list[str]:
        """The ``vng`` command line for one attempt."""
        cmd = [self.vng or vng_binary(), "--run", str(self.kernel), "--cpus", str(self.cpus),
               "--memory", self.memory, "--name", socket.gethostname().split(".")[0]]
        if accel == "tcg":
            cmd.append("--disable-kvm")
        for d in (*self.rwdirs, scratch):
            cmd += ["--rwdir", str(d)]
        return [*cmd, "--exec", guest_script(argv, accel, self.kernel, scratch)]

    def _attempt(self, accel: str, argv: Sequence[str], scratch: Path) -> VmResult | str:
        """One boot: a VmResult, or why the guest did not boot (a string)."""
        boot_limit = self.boot_timeouts[accel]
        env = dict(os.environ)
        # vng runs virtme-run by name: the venv's bin must be on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(self.command(accel, argv, scratch), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        except OSError as e:
            raise VmError(f"cannot start virtme-ng: {e}") from e
        booted: list[float] = []  # when the marker came; the deadline moves on then
        early: list[str] = []
        try:
            assert proc.stdout is not None
            for line in _lines(proc, lambda: t0 + (self.timeout if booted else boot_limit)):
                if not booted:
                    if MARKER in line:
                        booted.append(time.monotonic())
                    else:
                        early.append(line)
                    continue
                self.out.write(line)
                self.out.flush()
            elapsed = time.monotonic() - t0
            if proc.poll() is None:  # a deadline passed
                if not booted:
                    return f"no sign of life within {boot_limit:.0f} s"
                raise VmError(f"the VM run did not finish within {self.timeout:.0f} s; "
                              "QEMU was stopped")
            if not booted:
                tail = " | ".join(ln.strip() for ln in early[-3:] if ln.strip())
                return f"QEMU exited with {proc.returncode} before the guest ran: {tail}"
            rc_file = scratch / "rc"
            if not rc_file.exists():
                raise VmError("the guest stopped before its command finished (kernel panic or "
                              f"out of memory?); QEMU exit code {proc.returncode}")
            return VmResult(int(rc_file.read_text().strip() or 1), accel, self.kernel,
                            booted[0] - t0, elapsed)
        finally:
            _stop(proc)


def _lines(proc: subprocess.Popen[bytes], deadline: Callable[[], float]) -> Any:
    """Lines of ``proc``'s output until it ends or ``deadline()`` passes."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while True:
            left = deadline() - time.monotonic()
            if left <= 0:
                return
            if not sel.select(timeout=min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                if buf:
                    yield buf.decode(errors="replace")
                proc.wait()
                return
            buf += chunk
            *done, buf = buf.split(b"\n")
            for line in done:
                yield line.decode(errors="replace") + "\n"
    finally:
        sel.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop virtme-ng and QEMU (their whole process group), politely then firmly."""
    if proc.poll() is not None:
        _killpg(proc.pid, signal.SIGKILL)  # stray children of a finished vng
        return
    _killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
