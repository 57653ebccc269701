#!/usr/bin/env bash
# The main job on a fresh machine: set-up (idempotent, quiet when complete), then the
# default benchmark suite; writes results/<machine>/<run>.json, its .csv, plots and
# report, and ends with the figures.
#
#   ./scripts/bench.sh [--host | --vm] [kpbench run options, e.g. --results DIR]
#
# One kernel per result. Where this kernel has every datapath of the suite, it runs
# here. Where it lacks one (IPVS on a Firecracker host):
#   - if a VM runs near native speed here (KVM), the whole suite runs in Debian's
#     kernel under virtme-ng (`kpbench vm run`), every datapath in one result;
#   - if only TCG emulation is available (hours for the suite), it runs here with the
#     datapaths this kernel has; the left-out ones are recorded as failed, and the
#     end says which they are and the command that measures them in a VM.
# --host / --vm force either choice.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/as-root.sh
as_root "$@"
where=auto
case "${1:-}" in
    --host) where=host; shift ;;
    --vm) where=vm; shift ;;
esac
bash scripts/setup.sh
scenario=scenarios/default.toml
kpbench=.venv/bin/kpbench

check_rc=0
lacking="$("$kpbench" vm check "$scenario" 2>/dev/null)" || check_rc=$?
if [ "$check_rc" -ne 0 ] && [ "$check_rc" -ne 3 ]; then
    echo "bench.sh: cannot check this kernel's datapaths (kpbench vm check exit $check_rc)" >&2
    exit "$check_rc"
fi
if [ "$check_rc" -eq 0 ] && [ "$where" != vm ]; then
    exec "$kpbench" run "$scenario" "$@"
fi
if [ "$where" = auto ]; then
    where=host
    if [ "$("$kpbench" vm accel)" = kvm ]; then where=vm; fi
    echo "bench.sh: this kernel lacks datapaths of the suite: $(cut -d: -f1 <<<"$lacking" | paste -sd' ')" >&2
    if [ "$where" = vm ]; then
        echo "bench.sh: KVM works here: the whole suite runs in a VM on Debian's kernel, every" \
             "datapath in one result (--host: stay on the host without them)" >&2
    else
        echo "bench.sh: VMs run here only under TCG emulation (the suite would take hours):" \
             "measuring on the host without them; the end says how to measure them in a VM" \
             "(--vm: the whole suite in a VM)" >&2
    fi
fi
if [ "$where" = vm ]; then
    exec "$kpbench" vm run -- run "$scenario" "$@"
fi
exec "$kpbench" run "$scenario" "$@"
