#!/usr/bin/env bash
# The main job on a fresh machine: set-up (idempotent), then the default
# benchmark suite; writes results/<machine>/<run>.json, its .csv and plots.
# Extra arguments go to `kpbench run` (e.g. --results DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kpbench run scenarios/default.toml "$@"
