#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (idempotent), then pytest.
# Run as root so the privileged tests (namespaces, iptables, nftables, BPF) run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
# pytest's 5 means no test ran, which must not pass silently.
[ "$rc" -eq 5 ] && { echo "test.sh: no tests were collected" >&2; exit 1; }
exit "$rc"
