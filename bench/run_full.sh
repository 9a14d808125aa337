#!/usr/bin/env bash
# The full benchmark: run it alone on a quiet machine (~1-1.5 h on two cores), then commit
# bench/RESULTS.md and bench/full/speedup.png (bench/full/results.json holds the raw numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
basisrt bench --out bench/full --results-md bench/RESULTS.md "$@"
