#!/usr/bin/env bash
# The main job on a fresh machine: set-up (idempotent), then the default
# benchmark suite; writes results/<machine>/<run>.json, its .csv and plots.
#
# One environment per comparison: when this kernel lacks a datapath the suite
# measures (IPVS on a Firecracker host), the whole suite runs inside Debian's
# kernel under virtme-ng (`kpbench vm run`), so every datapath is measured on
# one kernel. `--host` keeps to the host with what it supports and says what
# was left out (those points are recorded as failed). Other arguments go to
# `kpbench run` (e.g. --results DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
where=auto
if [ "${1:-}" = "--host" ]; then
    where=host
    shift
fi
bash scripts/setup.sh
scenario=scenarios/default.toml

check_rc=0
lacking="$(.venv/bin/kpbench vm check "$scenario" 2>/dev/null)" || check_rc=$?
if [ "$check_rc" -ne 0 ] && [ "$check_rc" -ne 3 ]; then
    echo "bench.sh: cannot check this kernel's datapaths (kpbench vm check exit $check_rc)" >&2
    exit "$check_rc"
fi
if [ "$check_rc" -eq 0 ]; then
    exec .venv/bin/kpbench run "$scenario" "$@"
fi
if [ "$where" = host ]; then
    echo "bench.sh: --host: left out, this kernel lacks them:" >&2
    sed 's/^/  /' <<<"$lacking" >&2
    exec .venv/bin/kpbench run "$scenario" "$@"
fi
echo "bench.sh: this kernel lacks datapaths of the suite:" >&2
sed 's/^/  /' <<<"$lacking" >&2
echo "bench.sh: running the whole suite in a VM on Debian's kernel, so every datapath is" \
     "measured on one kernel (--host: stay on the host without them)" >&2
exec .venv/bin/kpbench vm run -- run "$scenario" "$@"
