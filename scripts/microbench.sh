#!/usr/bin/env bash
# Render microbenchmarks (pytest-benchmark), saved under results/microbench and
# compared with the previous saved run when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/as-root.sh
as_root "$@"
bash scripts/setup.sh
store=results/microbench
compare=()
if compgen -G "$store/*/*.json" >/dev/null; then compare=(--benchmark-compare); fi
exec .venv/bin/python -m pytest tests/benchmarks -p no:randomly --benchmark-only \
    --benchmark-storage="file://$store" --benchmark-autosave "${compare[@]}" "$@"
