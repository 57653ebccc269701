"""The VM runner's logic, without booting anything: a fake ``vng`` plays the guest."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from bench.kernel import vm

# A stand-in for virtme-ng: "boots" when asked for TCG (prints the marker, runs the
# guest line with sh), "fails" under KVM the way QEMU does here, or hangs.
FAKE_VNG = """#!/bin/sh
mode="{mode}"
tcg=0; script=""
while [ $# -gt 0 ]; do
  case "$1" in
    --disable-kvm) tcg=1 ;;
    --exec) shift; script="$1" ;;
  esac
  shift
done
if [ "$mode" = hang ]; then echo "SeaBIOS"; exec sleep 600; fi
if [ "$tcg" = 0 ] && [ "$mode" = kvm-fails ]; then
  echo "qemu-system-x86_64: kvm_buf_set_msrs: Assertion failed." >&2; exit 255
fi
exec sh -c "$script"
"""


def fake_vng(tmp_path: Path, mode: str) -> str:
    path = tmp_path / f"vng-{mode}"
    path.write_text(FAKE_VNG.format(mode=mode))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def runner(tmp_path: Path, mode: str, **kw: object) -> vm.VmRunner:
    kernel = tmp_path / "vmlinuz-6.1.0-test"
    kernel.write_text("")
    kw.setdefault("verdicts", tmp_path / "kvm-guests.json")
    return vm.VmRunner(kernel, vng=fake_vng(tmp_path, mode), out=io.StringIO(),
                       err=io.StringIO(), **kw)  # type: ignore[arg-type]


def test_a_kvm_guest_that_failed_is_not_tried_again_until_the_host_reboots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm, "kvm_usable", lambda: True)
    first = runner(tmp_path, "kvm-fails")
    assert first.run(["true"]).accel == "tcg"
    assert "Assertion failed" in (vm.remembered_kvm(first.kernel, first.verdicts) or "")
    again = runner(tmp_path, "kvm-fails")
    result = again.run(["true"])
    assert result.accel == "tcg"
    (notice,) = result.notices  # no second KVM attempt, and it says why
    assert "did not boot earlier since the host started" in notice
    assert "falling back" not in again.err.getvalue()  # type: ignore[attr-defined]


def test_the_accelerator_is_found_by_booting_once(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    monkeypatch.setattr(vm, "kvm_usable", lambda: False)
    assert runner(tmp_path / "a", "ok").accelerator() == "tcg"  # no /dev/kvm: no boot
    monkeypatch.setattr(vm, "kvm_usable", lambda: True)
    works = runner(tmp_path / "b", "ok")
    assert works.accelerator() == "kvm"
    assert vm.remembered_kvm(works.kernel, works.verdicts) == vm.KVM_BOOTS
    fails = runner(tmp_path / "c", "kvm-fails")
    assert fails.accelerator() == "tcg"
    # Remembered: asking again boots nothing (this vng's KVM guest would boot).
    assert runner(tmp_path / "c", "ok").accelerator() == "tcg"


def test_kvm_failure_falls_back_to_tcg_with_a_notice(tmp_path: Path) -> None:
    r = runner(tmp_path, "kvm-fails", accels=("kvm", "tcg"))
    result = r.run(["sh", "-c", 'echo "accel=$KPBENCH_VM_ACCEL"; exit 7'])
    assert result.accel == "tcg" and result.returncode == 7
    assert r.out.getvalue() == "accel=tcg\n"  # type: ignore[attr-defined]
    (notice,) = result.notices
    assert "KVM guest did not boot" in notice and "falling back to TCG" in notice
    assert "Assertion failed" in notice
    assert notice in r.err.getvalue()  # type: ignore[attr-defined]


def test_guest_gets_its_environment(tmp_path: Path) -> None:
    r = runner(tmp_path, "ok", accels=("tcg",))
    result = r.run(["sh", "-c", 'echo "$KPBENCH_VM_ACCEL $KPBENCH_VM_KERNEL $PWD"'])
    assert result.returncode == 0 and result.notices == []
    assert r.out.getvalue().split() == ["tcg", str(r.kernel), str(vm.CHECKOUT)]  # type: ignore[attr-defined]


def test_a_guest_that_never_boots_is_an_error_and_is_stopped(tmp_path: Path) -> None:
    r = runner(tmp_path, "hang", accels=("tcg",), boot_timeouts={"tcg": 1.0})
    with pytest.raises(vm.VmError, match="did not boot: no sign of life within 1 s"):
        r.run(["true"])
    # The fake's `sleep 600` ran in QEMU's place: nothing of it may be left.
    leftovers = [p for p in Path("/proc").glob("[0-9]*")
                 if _cmdline(p).startswith("sleep600")]
    assert not leftovers


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b"").decode(errors="replace")
    except OSError:
        return ""


def test_a_run_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    r = runner(tmp_path, "ok", accels=("tcg",), timeout=2.0)
    with pytest.raises(vm.VmError, match="did not finish within 2 s"):
        r.run(["sleep", "30"])


def test_find_kernel(tmp_path: Path) -> None:
    for v in ("5.10.0-9-amd64", "6.1.0-56-amd64", "6.1.0-9-amd64"):
        (tmp_path / f"vmlinuz-{v}").write_text("")
    assert vm.find_kernel(None, tmp_path).name == "vmlinuz-6.1.0-56-amd64"
    assert vm.find_kernel("5.10.0-9-amd64", tmp_path).name == "vmlinuz-5.10.0-9-amd64"
    assert vm.find_kernel(str(tmp_path / "vmlinuz-6.1.0-9-amd64"), tmp_path).is_file()
    with pytest.raises(vm.VmError, match=r"not found.*installed: 5.10.0-9-amd64"):
        vm.find_kernel("4.19", tmp_path)
    with pytest.raises(vm.VmError, match="no kernel image.*scripts/setup.sh"):
        vm.find_kernel(None, tmp_path / "empty")


def test_guest_environment_reaches_results(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.results.environment import capture_environment

    monkeypatch.delenv(vm.ENV_ACCEL, raising=False)
    assert vm.guest_environment() == {} and not vm.in_guest()
    monkeypatch.setenv(vm.ENV_ACCEL, "tcg")
    monkeypatch.setenv(vm.ENV_KERNEL, "/boot/vmlinuz-6.1.0-56-amd64")
    env = capture_environment(**vm.guest_environment())
    assert env["where"] == "vm"
    assert env["vm"] == {"accel": "tcg", "kernel": "/boot/vmlinuz-6.1.0-56-amd64"}


def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(vm.VmError, match="--memory"):
        vm.VmRunner(tmp_path / "k", memory="lots")
    with pytest.raises(vm.VmError, match="--cpus"):
        vm.VmRunner(tmp_path / "k", cpus=0)


def test_vm_command_line(tmp_path: Path) -> None:
    r = runner(tmp_path, "ok", rwdirs=(tmp_path,), cpus=3, memory="4G")
    cmd = r.command("tcg", ["kpbench", "doctor"], tmp_path / "scratch")
    assert "--disable-kvm" in cmd
    assert cmd[cmd.index("--cpus") + 1] == "3" and cmd[cmd.index("--memory") + 1] == "4G"
    assert cmd.count("--rwdir") == 2
    assert "--disable-kvm" not in r.command("kvm", ["true"], tmp_path)
    assert os.path.basename(cmd[0]).startswith("vng")
