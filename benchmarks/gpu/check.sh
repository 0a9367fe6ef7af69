#!/usr/bin/env bash
# The GPU check kit: one command that measures on a GPU what the CPU cannot (benchmarks/gpu/check.py).
#   bash benchmarks/gpu/check.sh [--dry-run] [OUT_DIR]     (OUT_DIR defaults to $OUT)
# Writes OUT_DIR/results.json and OUT_DIR/results.md; downloads nothing. --dry-run: CPU, tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/../.."
dry=()
if [[ "${1:-}" == "--dry-run" ]]; then dry=(--dry-run); shift; fi
out="${1:-${OUT:?give an output folder as the first argument or in \$OUT}}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# 470 s at most: results are written after each part, so a stopped run keeps what it measured
exec timeout 470 python -m benchmarks.gpu.check "${dry[@]}" "$out"
