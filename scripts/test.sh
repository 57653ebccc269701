#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (idempotent), then pytest on
# the host, then the VM stage. Run as root so the privileged tests (namespaces,
# iptables, nftables, BPF) run.
#
# VM stage: the datapaths and probes this host's kernel lacks (IPVS, kprobes)
# are tested inside Debian's kernel under virtme-ng (`kpbench vm test`): the
# IPVS cases of the semantics tests and tests/vm (kernel-function probe against
# a known workload, a short benchmark recording the VM). KPBENCH_SKIP_VM=1
# leaves it out (for quick local runs only: the stage is part of the command).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/as-root.sh
as_root "$@"
bash scripts/setup.sh
# Runs killed before this one (SIGKILL leaves namespaces by nature) would skew the
# tests that compare the machine's state before and after: remove them first.
.venv/bin/kpbench clean
rc=0
# --durations: the slowest tests in every log, to keep the suite within its time.
.venv/bin/python -m pytest --durations=25 "$@" || rc=$?
# pytest's 5 means no test ran, which must not pass silently.
[ "$rc" -eq 5 ] && { echo "test.sh: no tests were collected" >&2; exit 1; }

vm_rc=0
if [ "${KPBENCH_SKIP_VM:-0}" = 1 ]; then
    echo "test.sh: KPBENCH_SKIP_VM=1: VM stage skipped" >&2
else
    echo "test.sh: VM stage: IPVS semantics and tests/vm in Debian's kernel (virtme-ng)" >&2
    # --timeout: a hung guest fails the stage (QEMU is stopped) instead of the CI run.
    .venv/bin/kpbench vm test --timeout 1800 -- -ra tests/vm \
        tests/integration/test_semantics.py -k "ipvs or not test_semantics" || vm_rc=$?
    [ "$vm_rc" -eq 5 ] && { echo "test.sh: the VM stage collected no tests" >&2; vm_rc=1; }
    [ "$vm_rc" -ne 0 ] && echo "test.sh: VM stage failed (exit $vm_rc)" >&2
fi
[ "$rc" -ne 0 ] && exit "$rc"
exit "$vm_rc"
