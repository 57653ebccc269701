"""The environment a run's numbers depend on, and which of it decides comparability.

:func:`capture_environment` records what bends the numbers (kernel, host or
VM, CPU, governor, the tools that program each datapath, git state) in a
result's ``environment``. Numbers from environments that differ in
:data:`ENV_KEYS` are not comparable: bench.analysis.compare refuses to
compare them and bench.results.baseline refuses to pool them;
:data:`ENV_WARN_KEYS` and :data:`ENV_WARN_IF_RECORDED` only warn.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from bench.paths import CHECKOUT
from bench.results.schema import VM_ACCELS, WHERE, EnvironmentDoc, VmDoc

# How long a version or git query may take before its answer counts as absent.
TOOL_TIMEOUT_S = 5.0

#: Environment keys (dotted paths into ``environment``) whose difference makes numbers
#: incomparable: the kernel, host vs VM and the VM's acceleration and kernel, the CPU,
#: and the rule-programming tools that decide each datapath variant's implementation.
ENV_KEYS: tuple[str, ...] = (
    "kernel_release", "where", "vm.accel", "vm.kernel", "cpu_model", "cpu_count",
    "tools.iptables", "tools.iptables-legacy", "tools.iptables-nft", "tools.nft",
)
#: Keys that bend numbers less predictably: a difference is a warning, not a refusal.
ENV_WARN_KEYS: tuple[str, ...] = ("governor", "tools.tcpreplay", "tools.bcc", "python")
#: Keys older results lack: a difference is a warning only when both runs recorded them
#: (another machine of the same kind is expected in CI; an older baseline is not suspect).
ENV_WARN_IF_RECORDED: tuple[str, ...] = ("machine_id",)


def _get(doc: Mapping[str, Any] | None, dotted: str) -> Any:
    cur: Any = doc
    for part in dotted.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def env_differences(base_env: Mapping[str, Any], new_env: Mapping[str, Any],
                    keys: Sequence[str] = ENV_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, BASE value, NEW value) for every key of ``keys`` that differs."""
    return [(k, _get(base_env, k), _get(new_env, k)) for k in keys
            if _get(base_env, k) != _get(new_env, k)]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Processor", "cpu model"):
            return value.strip()
    return platform.processor() or None


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    """First line of a short command's output, or None if it is absent, fails or hangs."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                           cwd=cwd, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    lines = [ln.strip() for ln in (p.stdout or p.stderr).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _bcc_version() -> str | None:
    # Debian's python3-bpfcc has no dist-info (and PyPI's "bcc" is an unrelated
    # package), so read bcc/version.py without importing bcc (which loads libbcc).
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", _read(f"{d}/version.py") or "")
        if m:
            return m.group(1)
    return None


def tool_versions() -> dict[str, str | None]:
    """Versions of the tools and libraries whose behaviour the numbers depend on (None: absent)."""
    return {
        "iptables": _run(["iptables", "--version"]),
        "iptables-legacy": _run(["iptables-legacy", "--version"]),
        "iptables-nft": _run(["iptables-nft", "--version"]),
        "nft": _run(["nft", "--version"]),
        "tcpreplay": _run(["tcpreplay", "--version"]),
        "bcc": _bcc_version(),
        "pyroute2": _dist_version("pyroute2"),
        "scapy": _dist_version("scapy"),
        "numpy": _dist_version("numpy"),
    }


def git_state(checkout: Path = CHECKOUT) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the work tree has changes) of ``checkout``.

    (None, None) outside git."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=checkout)
    if not commit:
        return None, None
    try:
        p = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                           timeout=TOOL_TIMEOUT_S, cwd=checkout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return commit, None
    return commit, (bool(p.stdout.strip()) if p.returncode == 0 else None)


def commit_label(env: Mapping[str, Any]) -> str:
    """A run's commit as results, listings and file names show it: the first 12 hex
    digits of ``git_commit`` (``nogit`` outside git), ``-dirty`` if the tree had changes."""
    commit = env.get("git_commit")
    return (commit[:12] if commit else "nogit") + ("-dirty" if env.get("git_dirty") else "")


def capture_environment(where: Literal["host", "vm"] = "host",
                        vm: VmDoc | Mapping[str, str] | None = None) -> EnvironmentDoc:
    """The environment of this process: kernel, CPU, governor, versions, git state.

    ``where`` says whether this runs on the host or inside the harness's VM;
    for "vm", ``vm`` gives {"accel": "kvm" | "tcg", "kernel": ...} (TCG makes
    absolute times slower, so results must say so).
    """
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    vm_doc: VmDoc | None = None
    if where == "vm":
        if not vm or vm.get("accel") not in VM_ACCELS or not vm.get("kernel"):
            raise ValueError(f"where='vm' needs vm={{'accel': one of {VM_ACCELS}, "
                             f"'kernel': ...}}, got {vm!r}")
        vm_doc = VmDoc(accel=vm["accel"], kernel=str(vm["kernel"]))  # type: ignore[typeddict-item]
    elif vm is not None:
        raise ValueError("vm is only meaningful with where='vm'")
    uname = platform.uname()
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    commit, dirty = git_state()
    return EnvironmentDoc(
        kernel_release=uname.release,
        kernel_version=uname.version,
        where=where,
        vm=vm_doc,
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count(),
        governor=governor.strip() if governor else None,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        kpbench=_dist_version("kpbench"),
        tools=tool_versions(),
        git_commit=commit,
        git_dirty=dirty,
        hostname=socket.gethostname(),
        machine_id=machine_id(),
    )


MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_id(files: tuple[str, ...] = MACHINE_ID_FILES) -> str | None:
    """8 hex digits that name this machine: a keyed hash of its machine id, or None.

    machine-id(5) asks applications not to publish the id itself (results are
    committed and shared), so only a hash keyed with this program's name is
    kept. A ``kpbench vm`` guest shares the host's /etc, hence its id: the
    same machine, told apart by ``where`` and the kernel.
    """
    for f in files:
        raw = (_read(f) or "").strip()
        if raw:
            return hashlib.sha256(f"kpbench:{raw}".encode()).hexdigest()[:8]
    return None

