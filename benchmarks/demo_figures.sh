#!/usr/bin/env bash
# The README's standing figures measured on the shipped demo models, regenerated in one go (the
# one-off studies the README quotes with their own command are not rerun here). Run it with nothing
# else on the machine (each study sets its own threads where it has a flag; the rest use
# OMP_NUM_THREADS, 2 by default):
#
#     bash benchmarks/demo_figures.sh [VERSIONS_REV [PREFILL_REV [DEMO_WORKDIR]]] > runs/demo_figures.log 2>&1
#
# VERSIONS_REV is the commit whose demo AR base the new one's accuracy is compared against
# (demo_versions: the FastVLM demo before the reading pretext), PREFILL_REV the one whose prefill
# cost is (demo_prefill: the Qwen2.5-VL demo), DEMO_WORKDIR the `make-demo` work directory the shipped
# demo came from (its training split, for the failure analysis on training images; skipped where it is
# absent). A failing study is reported and the next one still runs.
#
# The studies import the package as it is on disk when each starts, and bash reads this script as it
# goes: to keep editing while it runs, run it from a worktree of the commit being measured
# (`git worktree add ../fig HEAD && cd ../fig && ln -s "$OLDPWD/runs" runs && PYTHONPATH=src bash
# benchmarks/demo_figures.sh ...`), then copy its benchmarks/results back.
set -u
OLD=${1:-b4bbfea}
OLD_PREFILL=${2:-e76036a}
DEMO_WORKDIR=${3:-runs/demo3}
R=benchmarks/results
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
failed=()
step() {
    echo "== $(date +%H:%M:%S) $*"
    "$@" || { echo "!! failed: $*"; failed+=("$*"); }
}
step fast-dvlm bench --json $R/bench_demo.json --plot $R/bench_demo.png
step python -m benchmarks.demo_versions --old-rev "$OLD" --split val --out $R/demo_versions_val
step python -m benchmarks.demo_versions --old-rev "$OLD" --split test --out $R/demo_versions_test
step python -m benchmarks.demo_failures --split val --out $R/demo_failures_val
if [ -f "$DEMO_WORKDIR/data/train.json" ]; then
    step python -m benchmarks.demo_failures --split-file "$DEMO_WORKDIR/data/train.json" --per-task 60 \
        --out $R/demo_failures_train
else
    echo "== skipped: the failure analysis on training images ($DEMO_WORKDIR/data/train.json not found)"
fi
step python -m benchmarks.binding_study --out $R/binding_study
step python -m benchmarks.demo_prefill --old-rev "$OLD_PREFILL" --out $R/demo_prefill
step python benchmarks/ttft.py --recost $R/ttft.json
step python benchmarks/batch_decode.py --per-task 8 --repeats 3 --json $R/batch_decode.json
step python benchmarks/batch_decode.py --per-task 8 --repeats 3 --modes spec-linear --order grouped \
    --json $R/batch_decode_grouped.json
step python benchmarks/batch_profile.py --per-task 8 --mode spec-linear --json $R/batch_profile.json
for c in 1 4 8 16; do
    step python benchmarks/serve_load.py --model demo --requests 144 --concurrency $c --json $R/serve_load_c$c.json
done
for c in 1 8; do
    step python benchmarks/serve_load.py --model demo --requests 144 --concurrency $c --server-process \
        --json $R/serve_load_process_c$c.json
done
step python benchmarks/decode_profile.py --repeats 5
step python benchmarks/fp8_error.py --model demo --out $R/fp8_error.json
step fast-dvlm quantize --model demo --scheme fp8-w8a8 --out runs/demo-fp8 --emulate --dtype float32
step fast-dvlm bench --model runs/demo-fp8 --base demo-ar --json $R/bench_demo_fp8.json
echo "== $(date +%H:%M:%S) done; ${#failed[@]} failed"
for f in "${failed[@]}"; do echo "!! $f"; done
[ ${#failed[@]} -eq 0 ]
