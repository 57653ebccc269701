"""``kpbench vm``: run kpbench (or the VM test suite) inside a real Linux kernel.

  kpbench vm run [--kernel PATH|VERSION] [--cpus N] [--memory SIZE] -- run scenarios/default.toml
  kpbench vm test -- tests/vm -x
  kpbench vm check scenarios/default.toml   # which of its datapaths this kernel lacks
  kpbench vm accel                          # kvm or tcg: what a VM run gets here

The kernel (default: the newest image under /boot, e.g. Debian's
linux-image-amd64) boots under virtme-ng with the host's root filesystem
shared read-only; the checkout's results/ is writable, so results land there
as from a host run, their environment saying "vm", the kernel and KVM or TCG.
KVM is tried first when /dev/kvm is usable; if the guest does not boot, TCG
is used and a one-line notice says so. The exit code is the guest command's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.commands._common import number_in
from bench.kernel import vm
from bench.paths import RESULTS_DIR


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vm", help="run kpbench inside a real kernel under virtme-ng (QEMU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="vm_action", metavar="ACTION", required=True)
    for name, help_text in (("run", "run `kpbench ARGS` in the VM"),
                            ("test", "run `pytest ARGS` in the VM (the test command's VM stage)")):
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("--kernel", metavar="PATH|VERSION",
                       help="kernel image, or a version under /boot (default: the newest there)")
        a.add_argument("--cpus", type=number_in(1, 1024, integer=True), default=vm.DEFAULT_CPUS,
                       help=f"virtual CPUs (default {vm.DEFAULT_CPUS})")
        a.add_argument("--memory", default=vm.DEFAULT_MEMORY,
                       help=f"guest memory, e.g. 4G (default {vm.DEFAULT_MEMORY})")
        a.add_argument("--timeout", type=number_in(1, 30 * 86400), default=3 * 3600.0,
                       metavar="SECONDS",
                       help="stop the VM after this long, boot included (default 10800)")
        a.add_argument("--tcg", action="store_true",
                       help="skip the KVM attempt and use TCG emulation directly")
        a.add_argument("--rwdir", action="append", default=[], metavar="DIR",
                       help="another host folder the guest may write (repeatable); the "
                            "checkout's results/ always is")
        a.add_argument("args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                       help="arguments for kpbench (run) or pytest (test) inside the VM")
        a.set_defaults(func=run)
    a = actions.add_parser(
        "accel", help="print the accelerator a VM run gets here: kvm or tcg",
        description="Print kvm or tcg: the accelerator `kpbench vm run` gets on this machine. "
                    "Where /dev/kvm opens, a KVM guest is booted once to find out (up to "
                    f"{vm.KVM_BOOT_TIMEOUT:.0f} s); the answer is kept until the host reboots. "
                    "scripts/bench.sh uses it: under TCG the suite would take hours.")
    a.add_argument("--kernel", metavar="PATH|VERSION",
                   help="kernel image, or a version under /boot (default: the newest there)")
    a.set_defaults(func=accel)
    c = actions.add_parser(
        "check", help="say which datapaths of a scenario this kernel lacks (exit 3 if any)",
        description="Print each datapath of SCENARIO that this kernel cannot program, with the "
                    "reason, one per line; exit 0 when it supports them all, 3 otherwise. "
                    "scripts/bench.sh uses it to decide whether the suite needs the VM.")
    c.add_argument("scenario", metavar="SCENARIO")
    c.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    from bench.errors import FeatureBroken
    from bench.kernel import features
    from bench.measure.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    lacking = 0
    for variant in scenario.datapaths:
        missing, broken = features.lacking(features.DATAPATH_NEEDS.get(variant, ()))
        if broken:  # the kernel has it; another kernel would not help
            raise FeatureBroken(f"{variant}: fails although this kernel supports it: {broken}")
        if missing:
            lacking += 1
            print(f"{variant}: {missing}")
    return 3 if lacking else 0


def accel(args: argparse.Namespace) -> int:
    kernel = vm.find_kernel(args.kernel)
    runner = vm.VmRunner(kernel)
    if vm.kvm_usable() and vm.remembered_kvm(kernel) is None:
        print(f"kpbench: trying a KVM guest of {vm.kernel_release(kernel)} (up to "
              f"{vm.KVM_BOOT_TIMEOUT:.0f} s, once until the host reboots)", file=sys.stderr,
              flush=True)
    print(runner.accelerator())
    return 0


def run(args: argparse.Namespace) -> int:
    argv = list(args.args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if args.vm_action == "run" and not argv:
        raise vm.VmError("nothing to run: give kpbench arguments after --, e.g. "
                         "`kpbench vm run -- run scenarios/default.toml`")
    results = RESULTS_DIR
    results.mkdir(exist_ok=True)
    kernel = vm.find_kernel(args.kernel)
    runner = vm.VmRunner(kernel, cpus=args.cpus, memory=args.memory, timeout=args.timeout,
                         rwdirs=(results, *(Path(d).resolve() for d in args.rwdir)),
                         accels=("tcg",) if args.tcg else None)
    command = vm.kpbench_argv(argv) if args.vm_action == "run" else vm.pytest_argv(argv)
    print(f"kpbench: booting {kernel} ({args.cpus} CPUs, {args.memory})", file=sys.stderr,
          flush=True)
    result = runner.run(command)
    print(f"kpbench: VM {result.accel.upper()}, kernel {vm.kernel_release(kernel)}: booted in "
          f"{result.boot_seconds:.0f} s, finished in {result.seconds:.0f} s, exit code "
          f"{result.returncode}", file=sys.stderr, flush=True)
    return result.returncode
